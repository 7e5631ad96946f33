"""From part files to the result: parts sent to rank 0 where nodes share no filesystem, the
merge into one ordered output, progress, per-rank stats, the summary table and the manifest."""

from ddpinfer.results.merge import MergeSummary, merge_parts
from ddpinfer.results.progress import Progress
from ddpinfer.results.stats import save_merge_stats, save_rank_stats
from ddpinfer.results.transfer import collect_parts

__all__ = [
    "MergeSummary",
    "Progress",
    "collect_parts",
    "merge_parts",
    "save_merge_stats",
    "save_rank_stats",
]
