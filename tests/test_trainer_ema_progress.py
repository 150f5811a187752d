"""Parameter EMA (math, training, evaluation, resume) and the progress bar's completed-step counting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projects.common import progress
from projects.common import trainer
from projects.common import train_state
from test_trainer import NUM_CLASSES, _Recorder, _TinyModel, _config, _dataset  # pylint: disable=g-bad-import-order


def test_ema_decay_warmup_and_update_math():
  assert float(train_state.ema_decay_at(1, 0.999)) == pytest.approx(2 / 11)
  assert float(train_state.ema_decay_at(10 ** 6, 0.999)) == pytest.approx(0.999)
  assert float(train_state.ema_decay_at(1, 0.999, warmup=False)) == pytest.approx(0.999)
  ema = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(4.0, jnp.bfloat16)}
  params = {"w": jnp.array([3.0, 6.0]), "b": jnp.array(0.0, jnp.bfloat16)}
  out = train_state.update_ema(ema, params, step=5, decay=0.75, warmup=False)
  np.testing.assert_allclose(np.asarray(out["w"]), [1.5, 3.0])
  assert out["b"].dtype == jnp.bfloat16 and float(out["b"]) == 3.0
  copy = train_state.init_ema(params)
  assert copy["w"] is not params["w"] and np.array_equal(copy["w"], params["w"])


def test_ema_is_trained_evaluated_and_restored_on_resume(tmp_path):
  model = _TinyModel(None, {"num_classes": NUM_CLASSES})

  def config():
    cfg = _config(log_eval_steps=8)
    cfg.ema_decay = 0.9
    return cfg

  params, emas = {}, {}

  def keep(step, state, metrics):
    params[step], emas[step] = jax.device_get((state.params, state.ema_params))

  full = trainer.train_and_evaluate(model, _dataset(), config(), str(tmp_path / "full"),
                                    hooks=[keep])
  # A hand-rolled EMA over the recorded parameter trajectory (with warm-up) gives the same result.
  ema = emas[1]
  for step in range(2, 9):
    d = min(0.9, (1 + step) / (10 + step))
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params[step])
  for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(full.state.ema_params)):
    np.testing.assert_allclose(a, np.asarray(b), rtol=1e-6, atol=1e-7)
  assert not np.array_equal(jax.tree.leaves(full.state.ema_params)[0],
                            jax.tree.leaves(full.state.params)[0])
  assert "pixel_accuracy" in full.eval_summary["ema"]

  # Killed at step 7 (last checkpoint: 6) and resumed: the EMA continues from the checkpointed one.
  workdir = str(tmp_path / "killed")
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(model, _dataset(), config(), workdir, hooks=[_Recorder(kill_at=7)])
  resumed = trainer.train_and_evaluate(model, _dataset(), config(), workdir)
  for a, b in zip(jax.tree.leaves(full.state.ema_params), jax.tree.leaves(resumed.state.ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Marker:
  """A stand-in for a step's output whose readiness the test controls."""

  def __init__(self):
    self.ready = False
    self.waited = False

  def is_ready(self):
    return self.ready

  def block_until_ready(self):
    self.ready = self.waited = True
    return self


def test_progress_counts_completed_steps_in_order(monkeypatch):
  monkeypatch.setattr(progress.jax, "block_until_ready", lambda m: m.block_until_ready())
  monkeypatch.setattr(progress.jax.tree, "leaves", lambda m: [m])
  counter = progress.CompletedSteps(max_in_flight=2)
  markers = [_Marker() for _ in range(4)]
  counter.dispatched(1, markers[0])
  counter.dispatched(2, markers[1])
  assert counter.poll() == 0 and counter.in_flight == 2  # dispatched is not completed
  markers[1].ready = True
  assert counter.poll() == 0  # step 2 is done but step 1 is not: nothing counts yet
  markers[0].ready = True
  assert counter.poll() == 2 and counter.last_completed == 2
  assert counter.poll() == 0  # counted once
  counter.dispatched(3, markers[2])
  counter.dispatched(4, markers[3])
  assert not markers[2].waited
  fifth = _Marker()
  counter.dispatched(5, fifth)  # a third step in flight: waits for the oldest (step 3)
  assert markers[2].waited and not markers[3].waited and counter.in_flight == 2
  assert counter.poll() == 1 and counter.last_completed == 3
  assert counter.wait_all() == 2 and counter.last_completed == 5 and counter.in_flight == 0
  with pytest.raises(ValueError, match="max_in_flight"):
    progress.CompletedSteps(max_in_flight=0)
