"""One error type for everything a user can get wrong or a simulation can break.

Every error names where it happened: the file, the field path inside it (``objects[1].radius``),
the line when known, the object, the simulation step and the quantity. The CLI prints
``str(error)`` on one line and exits non-zero, with no traceback.
"""

from __future__ import annotations

__all__ = ["HybridsimError", "SceneError", "AssetError", "SimulationError", "ResourceError"]


class HybridsimError(Exception):
    """Base error; ``str()`` is a one-line message naming file, line, field, object and step."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        field: str | None = None,
        line: int | None = None,
        object: str | None = None,
        step: int | None = None,
        quantity: str | None = None,
    ):
        self.message = message
        self.file = None if file is None else str(file)
        self.field = field
        self.line = line
        self.object = object
        self.step = step
        self.quantity = quantity
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.field:
            where.append(self.field)
        if self.object:
            where.append(f"object {self.object!r}")
        if self.step is not None:
            where.append(f"step {self.step}")
        if self.quantity:
            where.append(self.quantity)
        prefix = ": ".join(where)
        text = " ".join(str(self.message).split())  # always one line
        return f"{prefix}: {text}" if prefix else text

    def __reduce__(self):  # survive pickling across process pools with all fields
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls, message, state):
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class SceneError(HybridsimError):
    """A scene file or scene description is malformed or inconsistent."""


class AssetError(HybridsimError):
    """A mesh, video, image folder or weights file cannot be read or is unusable."""


class SimulationError(HybridsimError):
    """A simulation produced non-finite or exploding values; names the step and quantity.

    Errors from the blow-up guards (``hybridsim.sim.guards``) also carry ``frame`` (the first bad
    frame), ``substep`` (1-based within it, None when unknown) and ``partial``: the trajectory of
    the good frames before it (frames 0 .. frame-1), so callers can keep what was simulated. Their
    message already names frame, step, object and quantity, so ``str()`` is ``file: message``.
    """

    def __init__(self, message: str, *, frame: int | None = None, substep: int | None = None, partial=None,
                 **kwargs):
        self.frame = frame
        self.substep = substep
        self.partial = partial
        super().__init__(message, **kwargs)

    def __str__(self) -> str:
        if getattr(self, "frame", None) is None:
            return super().__str__()
        text = " ".join(str(self.message).split())
        return f"{self.file}: {text}" if self.file else text

    def __reduce__(self):  # the partial trajectory (tensors) stays in this process
        state = {k: v for k, v in self.__dict__.items() if k != "partial"}
        return (_rebuild, (type(self), self.message, dict(state, partial=None)))


class ResourceError(HybridsimError):
    """A request would exceed memory or another resource limit; refused before allocation."""
