"""Job specs: the schema every task shares, the search schema, and reading a job file.

* :mod:`.schema`: the sections every job has (``train``, ``resources``, ``storage``, ``tracking``,
  ``search``) and :class:`~.schema.JobSpec`, the base of each task's job class.
* :mod:`.search`: the ``search:`` section of a campaign and its checks against the schema.
* :mod:`.loading`: YAML + ``--set`` overrides -> the task's job class (found in the task registry,
  :mod:`service.tasks`), every problem as one :class:`~.errors.JobSpecError`.
* :mod:`.errors` and :mod:`.tree`: the error type and dotted-key helpers the others share.

This package's ``__init__`` imports nothing: a task's spec module imports :mod:`.schema` without
pulling in the registry that imports the task.
"""
