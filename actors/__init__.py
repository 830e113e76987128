"""The actor layer of taskengine: counter actors, the pending store, the executor pool and
the :class:`Engine` façade that owns them. Builds on ``taskengine.storage``.

Users import the API from ``taskengine``; these names stay here for code inside the package.
"""

from taskengine.storage import Execution, ExecutionStatus, Task, TaskStatus

from . import errors
from .engine import Engine
from .jobs import JobContext

__all__ = ["Engine", "Execution", "ExecutionStatus", "JobContext", "Task", "TaskStatus", "errors"]
