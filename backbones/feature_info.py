"""timm-style description of the levels a feature extractor returns."""

from typing import Any, Dict, List, Sequence


class FeatureInfo:
  """Channels, reduction (stride) and output name of each returned level, as ``timm``'s FeatureInfo."""

  def __init__(self, levels: Sequence[Dict[str, Any]]):
    self.info: List[Dict[str, Any]] = [dict(level) for level in levels]

  def channels(self) -> List[int]:
    return [level["num_chs"] for level in self.info]

  def reduction(self) -> List[int]:
    return [level["reduction"] for level in self.info]

  def module_name(self) -> List[str]:
    return [level["module"] for level in self.info]

  def __len__(self) -> int:
    return len(self.info)

  def __getitem__(self, index: int) -> Dict[str, Any]:
    return self.info[index]

  def __repr__(self) -> str:
    return f"FeatureInfo({self.info})"
