"""``ade20k_challenge``: a tfds builder for the 150-class ADE20K scene-parsing benchmark.

The stock tfds ``scene_parse150`` reads the instance-track masks, not the benchmark's class maps, so this
builder reads the official ``ADEChallengeData2016`` release from the manual dir, either the zip or the
extracted folder::

  <manual_dir>/ADEChallengeData2016.zip            (or the extracted <manual_dir>/ADEChallengeData2016/)
    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_XXXXXXXX.png

(the extracted folder is used when both are present).

Features: ``image`` (the original JPEG bytes, uint8 HxWx3), ``segmentation`` (the original 8-bit PNG, uint8
HxWx1, raw values 0..150 with 0 = "other"), ``image/filename`` and ``image/id`` (the number in the file
name). Images are stored unchanged; the label mapping (0 -> ignore, k -> k-1) is the input pipeline's job.
Inconsistent input (an image without annotation or the reverse, an unreadable file, an image that is not a
JPEG, an annotation that is not an 8-bit grayscale PNG or whose size differs from its image, a label above
150) raises ``ValueError`` naming the file.

Prepare it with ``python -m projects.segmentation.data.prepare_ade20k --manual_dir DIR --data_dir DIR``.
"""

import abc
import io
import os
import re
import zipfile
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from projects.segmentation.data import ade20k_classes

ROOT = "ADEChallengeData2016"
ZIP_NAME = ROOT + ".zip"
# tfds split name -> the folder name of the official release.
SPLIT_FOLDERS = {"train": "training", "validation": "validation"}
PREPARE_MODULE = "projects.segmentation.data.prepare_ade20k"

_ID_PATTERN = re.compile(r"(\d+)$")


def prepare_command(data_dir: Optional[str], manual_dir: str = "MANUAL_DIR") -> str:
  """The shell command that prepares the dataset from ``manual_dir`` into ``data_dir`` (None: tfds's)."""
  command = f"python -m {PREPARE_MODULE} --manual_dir {manual_dir}"
  return command + (f" --data_dir {data_dir}" if data_dir else "")


class _Source(abc.ABC):
  """Read access to the files of the release, by path relative to the ``ADEChallengeData2016`` root."""

  @abc.abstractmethod
  def list_dir(self, folder: str) -> List[str]:
    """File names directly inside ``folder``."""

  @abc.abstractmethod
  def read(self, path: str) -> bytes:
    """The bytes of file ``path``."""

  @abc.abstractmethod
  def describe(self, path: str) -> str:
    """A path that a user can find ``path`` under (for error messages)."""


class _FolderSource(_Source):
  """The extracted release."""

  def __init__(self, root: str):
    self._root = root

  def list_dir(self, folder: str) -> List[str]:
    full = os.path.join(self._root, folder)
    if not os.path.isdir(full):
      raise ValueError(f"ADE20K folder {full} does not exist; expected the official "
                       f"{ROOT}/{{images,annotations}}/{{training,validation}} layout")
    return [name for name in os.listdir(full) if os.path.isfile(os.path.join(full, name))]

  def read(self, path: str) -> bytes:
    with open(os.path.join(self._root, path), "rb") as f:
      return f.read()

  def describe(self, path: str) -> str:
    return os.path.join(self._root, path)


class _ZipSource(_Source):
  """The official zip, read in place."""

  def __init__(self, zip_path: str):
    self._zip_path = zip_path
    self._zip = zipfile.ZipFile(zip_path)
    self._folders: Dict[str, List[str]] = {}
    for name in self._zip.namelist():
      if name.startswith(ROOT + "/") and not name.endswith("/"):
        folder, _, base = name[len(ROOT) + 1:].rpartition("/")
        self._folders.setdefault(folder, []).append(base)

  def list_dir(self, folder: str) -> List[str]:
    if folder not in self._folders:
      raise ValueError(f"{self._zip_path} has no folder {ROOT}/{folder}; expected the official "
                       f"{ROOT}/{{images,annotations}}/{{training,validation}} layout")
    return list(self._folders[folder])

  def read(self, path: str) -> bytes:
    return self._zip.read(f"{ROOT}/{path}")

  def describe(self, path: str) -> str:
    return f"{self._zip_path}:{ROOT}/{path}"


def _open_source(manual_dir: str) -> _Source:
  """The extracted folder if ``manual_dir`` has one, else the zip."""
  folder = os.path.join(manual_dir, ROOT)
  zip_path = os.path.join(manual_dir, ZIP_NAME)
  if os.path.isdir(folder):
    return _FolderSource(folder)
  if os.path.isfile(zip_path):
    return _ZipSource(zip_path)
  raise FileNotFoundError(f"neither {folder}/ nor {zip_path} exists.\n"
                          + Ade20kChallenge.MANUAL_DOWNLOAD_INSTRUCTIONS)


def _stems(source: _Source, folder: str, suffix: str) -> Dict[str, str]:
  """``{file stem: file name}`` of the ``suffix`` files in ``folder``."""
  return {name[:-len(suffix)]: name for name in source.list_dir(folder) if name.lower().endswith(suffix)}


def _open_image(data: bytes, where: str) -> Image.Image:
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Exception as e:  # PIL raises many types for truncated or corrupt files.
    raise ValueError(f"cannot read image {where}: {e}") from e
  return image


def _check_example(image_bytes: bytes, seg_bytes: bytes, image_where: str, seg_where: str) -> None:
  """Raises ``ValueError`` naming the file if the pair is not a valid benchmark example."""
  image = _open_image(image_bytes, image_where)
  if image.format not in ("JPEG", "MPO") or image.mode not in ("RGB", "L"):  # MPO: multi-picture JPEG
    raise ValueError(f"image {image_where} is {image.format} mode {image.mode}; expected an RGB or "
                     "grayscale JPEG as in the official release")
  seg = _open_image(seg_bytes, seg_where)
  if seg.format != "PNG" or seg.mode != "L":
    raise ValueError(f"annotation {seg_where} is {seg.format} mode {seg.mode}; expected an 8-bit "
                     "grayscale PNG (0 = other, 1..150 = classes)")
  if seg.size != image.size:
    raise ValueError(f"annotation {seg_where} is {seg.size[0]}x{seg.size[1]} (WxH) but its image "
                     f"{image_where} is {image.size[0]}x{image.size[1]}")
  max_label = int(np.asarray(seg).max())
  if max_label > ade20k_classes.NUM_CLASSES:
    raise ValueError(f"annotation {seg_where} has label {max_label}; "
                     f"ADE20K labels are 0..{ade20k_classes.NUM_CLASSES}")


class Ade20kChallenge(tfds.core.GeneratorBasedBuilder):
  """ADE20K scene parsing (``ADEChallengeData2016``): 150 classes, 20,210 train / 2,000 val images."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: original JPEG/PNG bytes, raw labels 0..150."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {ZIP_NAME} (the ADE20K scene-parsing benchmark, 150 classes) from
http://sceneparsing.csail.mit.edu/ (http://data.csail.mit.edu/places/ADEchallenge/{ZIP_NAME}) and place
the zip, or its extracted {ROOT}/ folder, in the manual dir, then run
  {prepare_command("DATA_DIR")}
(the extracted folder is used when both are present)
For a small generated stand-in in the same layout, see projects/segmentation/data/make_synthetic_ade20k.py."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=("ADE20K scene parsing benchmark (ADEChallengeData2016): 150 semantic classes. "
                     "segmentation holds the raw annotation: 0 = other (ignored), k = class k-1."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "segmentation": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "image/filename": tfds.features.Text(),
            "image/id": np.int64,
        }),
        supervised_keys=("image", "segmentation"),
        homepage="http://sceneparsing.csail.mit.edu/",
        citation="""@inproceedings{zhou2017scene,
  title={Scene Parsing through ADE20K Dataset},
  author={Zhou, Bolei and Zhao, Hang and Puig, Xavier and Fidler, Sanja and Barriuso, Adela
          and Torralba, Antonio},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition},
  year={2017}
}""",
        metadata=tfds.core.MetadataDict(class_names=list(ade20k_classes.CLASS_NAMES)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    source = _open_source(os.fspath(dl_manager.manual_dir))
    return {split: self._generate_examples(source, folder) for split, folder in SPLIT_FOLDERS.items()}

  def _generate_examples(self, source: _Source, folder: str) -> Iterator[Tuple[str, dict]]:
    image_dir, seg_dir = f"images/{folder}", f"annotations/{folder}"
    images = _stems(source, image_dir, ".jpg")
    segs = _stems(source, seg_dir, ".png")
    if not images:
      raise ValueError(f"no .jpg images in {source.describe(image_dir)}")
    unpaired = sorted(images.keys() - segs.keys())
    if unpaired:
      raise ValueError(f"image {source.describe(f'{image_dir}/{images[unpaired[0]]}')} has no annotation "
                       f"{source.describe(f'{seg_dir}/{unpaired[0]}.png')} "
                       f"({len(unpaired)} unpaired images)")
    unpaired = sorted(segs.keys() - images.keys())
    if unpaired:
      raise ValueError(f"annotation {source.describe(f'{seg_dir}/{segs[unpaired[0]]}')} has no image "
                       f"{source.describe(f'{image_dir}/{unpaired[0]}.jpg')} "
                       f"({len(unpaired)} unpaired annotations)")
    for stem in sorted(images):
      image_path, seg_path = f"{image_dir}/{images[stem]}", f"{seg_dir}/{segs[stem]}"
      match = _ID_PATTERN.search(stem)
      if match is None:
        raise ValueError(f"image {source.describe(image_path)}: the file name has no numeric id "
                         "(expected ADE_{train,val}_XXXXXXXX.jpg)")
      image_bytes, seg_bytes = source.read(image_path), source.read(seg_path)
      _check_example(image_bytes, seg_bytes, source.describe(image_path), source.describe(seg_path))
      yield stem, {
          "image": image_bytes,
          "segmentation": seg_bytes,
          "image/filename": images[stem],
          "image/id": int(match.group(1)),
      }


def prepare(manual_dir: str, data_dir: Optional[str] = None, overwrite: bool = False) -> Ade20kChallenge:
  """Builds the tfds dataset from the release in ``manual_dir`` into ``data_dir``; returns the builder."""
  builder = Ade20kChallenge(data_dir=data_dir)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=mode, try_download_gcs=False))
  return builder
