"""wanspec: the rules of the Wan2.2 tasks, torch-free, shared by the CLI, the operator and the runner.

Everything here is plain Python (pydantic at most), so the operator can validate a resource with
exactly the rules the pipeline enforces, without importing torch.
"""

from wanspec.tasks import TASKS, Size, TaskSpec, get_task

__all__ = ["TASKS", "Size", "TaskSpec", "get_task"]
