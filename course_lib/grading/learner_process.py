"""The grader's handle on the process that runs a learner's code.

:class:`LearnerProcess` starts ``child.py`` (a supervisor and a worker, see its docstring) in
a new session, sends it the chapter's rules, and then runs the learner's functions there on
the grader's behalf: :class:`LearnerFunction` is what a check receives as ``fn``. Calling it
sends the arguments over a pipe (:mod:`wire`), waits for the result with a time budget, runs
any callback the learner's code makes (``logits_fn``), copies back what the learner changed in
place (so "your function changed its input" checks still see it), and turns the learner's
exception into one of the same type (``expect_raises(ValueError, ...)`` still works).

Everything the learner's process does wrong ends here as an exception the runner reports:
:class:`LearnerProcessEnded` (timed out, crashed, killed its parent, ran out of memory) or a
:class:`LearnerError` subclass (its code raised). Printed output goes to a pipe that a thread
drains: the first ``OUTPUT_KEEP`` bytes per exercise are kept, the rest only counted.
"""

from __future__ import annotations

import builtins
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from course_lib.grading import wire
from course_lib.grading.registry import GradeError

STARTUP_TIMEOUT = 60.0           # seconds for the child to import numpy/torch and the learner's file
OUTPUT_KEEP = 1_000_000          # bytes of printed output kept per exercise; the rest is counted
DEFAULT_MEMORY_GB = 4.0          # RLIMIT_AS of the learner's process (Linux); 0 = no limit
CHILD_SCRIPT = Path(__file__).with_name("child.py")
WIRE_SCRIPT = Path(__file__).with_name("wire.py")


def memory_limit_bytes(gb: float | None = None) -> int:
    """The limit in bytes: ``gb``, else ``$COURSE_GRADER_MEMORY_GB``, else 4 GB; 0 means none."""
    if gb is None:
        try:
            gb = float(os.environ.get("COURSE_GRADER_MEMORY_GB", DEFAULT_MEMORY_GB))
        except ValueError:
            gb = DEFAULT_MEMORY_GB
    return int(max(gb, 0) * 2**30)


# ----------------------------------------------------------------------------- what can go wrong


class LearnerProcessEnded(BaseException):
    """The learner's process is gone (or had to be killed). A BaseException, so that no check's
    ``except Exception`` can swallow it; the runner reports ``status`` with ``message``."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class LearnerError(Exception):
    """Base of the exceptions rebuilt from the learner's code (``LearnerError`` + the original
    type where it is a builtin, e.g. a ``ValueError`` subclass)."""

    type_name = "Exception"
    learner_traceback = ""


class LearnerExit(LearnerError):
    """The learner's code called ``sys.exit``."""


_ERROR_CLASSES: dict[tuple[str, bool], type] = {}


def rebuild_error(type_name: str, builtin: bool, message: str, traceback_text: str) -> LearnerError:
    """An exception that is a ``LearnerError`` and, for a builtin type, an instance of that type."""
    base = getattr(builtins, type_name, None) if builtin else None
    if not (isinstance(base, type) and issubclass(base, Exception)) or base is Exception:
        base = None
    key = (type_name if base else "", bool(base))
    cls = _ERROR_CLASSES.get(key)
    if cls is None:
        bases = (base, LearnerError) if base else (LearnerError,)
        try:
            cls = type(type_name if base else "LearnerError", bases, {})
        except TypeError:  # an exception type that cannot be subclassed together with ours
            cls = LearnerError
        _ERROR_CLASSES[key] = cls
    try:
        err = cls(message)
    except Exception:
        err = LearnerError(message)
    err.type_name = type_name
    err.learner_traceback = traceback_text
    return err


# ----------------------------------------------------------------------------- printed output


class OutputDrain(threading.Thread):
    """Reads the learner's stdout/stderr pipe until it closes; splits it into segments at the
    markers the child writes on ``sync``, keeping ``keep`` bytes of each and counting the rest."""

    TAIL = 256

    def __init__(self, fd: int, keep: int = OUTPUT_KEEP):
        super().__init__(daemon=True)
        self.fd, self.keep = fd, keep
        self.lock = threading.Lock()
        self.kept, self.total, self.tail = bytearray(), 0, b""
        self.marker: bytes | None = None
        self.segments: list[tuple[bytes, int]] = []
        self.found = threading.Event()

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except OSError:
                break
            if not chunk:
                break
            with self.lock:
                self._add(chunk)
        with self.lock:
            self.found.set()

    def _append(self, data: bytes) -> None:
        room = self.keep - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        self.total += len(data)

    def _add(self, data: bytes) -> None:
        while data:
            if self.marker is not None:
                window = self.tail + data
                at = window.find(self.marker)
                if at >= 0:
                    overshoot = max(0, len(self.tail) - at)  # marker bytes already counted from the tail
                    if overshoot:
                        self.total -= overshoot
                        if len(self.kept) >= overshoot and len(self.kept) <= self.keep and \
                                self.total + overshoot == len(self.kept):
                            del self.kept[-overshoot:]
                    else:
                        self._append(data[:at - len(self.tail)])
                    self.segments.append((bytes(self.kept), self.total))
                    self.kept, self.total, self.tail = bytearray(), 0, b""
                    data = window[at + len(self.marker):]
                    self.marker = None
                    self.found.set()
                    continue
            self._append(data)
            self.tail = (self.tail + data)[-self.TAIL:]
            return

    def expect(self, marker: bytes) -> None:
        with self.lock:
            self.marker = marker
            self.found.clear()

    def segment(self, timeout: float) -> tuple[str, int]:
        """The output before the marker set with :meth:`expect` (or all so far, if it does not come)."""
        self.found.wait(timeout)
        with self.lock:
            if self.segments:
                kept, total = self.segments.pop(0)
            else:
                kept, total = bytes(self.kept), self.total
                self.kept, self.total, self.tail, self.marker = bytearray(), 0, b"", None
        return kept.decode("utf-8", "replace"), total


# ----------------------------------------------------------------------------- the process


class LearnerProcess:
    """One learner file, imported in a fresh supervised child; its functions run on request."""

    def __init__(self, source: Path, display: str, *, shortcuts: list[str], allow: list[str],
                 refuse: list[str], memory_bytes: int, cwd: Path, exercises_dir: Path):
        self.source, self.display = Path(source), display
        self.init = {"op": "init", "source": str(Path(source).resolve()), "display": display,
                     "module": Path(source).stem, "shortcuts": list(shortcuts), "allow": list(allow),
                     "refuse": list(refuse), "memory_bytes": int(memory_bytes),
                     "package_dir": str(Path(__file__).resolve().parents[1]),
                     "exercises_dir": str(Path(exercises_dir).resolve())}
        self.memory_bytes = memory_bytes
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.violations: list[dict] = []
        self.ended: LearnerProcessEnded | None = None
        self.budget = float("inf")  # seconds left for the current exercise's learner calls
        self.budget_total = float("inf")  # what the current exercise started with
        self.startup_output = ("", 0)

    # -- lifecycle
    def start(self, timeout: float | None = None) -> dict:
        """Start the child and import the learner's file; returns the ``ready`` message."""
        timeout = STARTUP_TIMEOUT if timeout is None else timeout
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        out_r, out_w = os.pipe()
        _grow_pipe(out_w)
        env = dict(os.environ)
        env.setdefault("MALLOC_ARENA_MAX", "2")  # glibc's per-thread arenas reserve address space under RLIMIT_AS
        env.pop("PYTHONSTARTUP", None)
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", str(CHILD_SCRIPT), str(req_r), str(rep_w), str(WIRE_SCRIPT)],
                stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w, pass_fds=(req_r, rep_w), env=env,
                cwd=str(self.cwd), close_fds=True, **kwargs)
        finally:
            for fd in (req_r, rep_w, out_w):
                os.close(fd)
        self.req_fd, self.rep_fd = req_w, rep_r
        self.reader = wire.FrameReader(rep_r)
        self.drain = OutputDrain(out_r)
        self.out_fd = out_r
        self.drain.start()
        self._send(self.init)
        self.budget = timeout
        ready = self._receive(what="importing your file", limit=timeout)
        self.violations += list(ready.get("violations") or [])
        self.startup_output = self.take_output()
        return ready

    def close(self) -> None:
        """Ask the child to exit; then kill its whole process group and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.poll() is None and self.ended is None:
                try:
                    wire.write_frame(self.req_fd, wire.encode({"op": "exit"}))
                    process.wait(timeout=2)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        finally:
            _kill_group(process)
            for fd in (self.req_fd, self.rep_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.drain.join(timeout=2)
            try:
                os.close(self.out_fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- messages
    def _send(self, message: dict) -> None:
        try:
            wire.write_frame(self.req_fd, wire.encode(message))
        except (BrokenPipeError, OSError):
            raise self._ended_now("running your code") from None

    def _receive(self, what: str, limit: float | None = None) -> dict:
        """The next message, waiting at most the current budget (or ``limit``)."""
        start = time.monotonic()
        budget = self.budget if limit is None else limit
        try:
            while True:
                try:
                    frame = self.reader.frame()
                except wire.WireError as err:
                    raise self._kill("error", f"your code sent the grader something it cannot read ({err})")
                if frame is not None:
                    try:
                        return wire.decode(frame)
                    except wire.WireError as err:
                        raise self._kill("error", f"your function returned something the grader cannot read "
                                                  f"({err})") from None
                if self.reader.closed:
                    raise self._ended_now(what)
                left = budget - (time.monotonic() - start)
                if left <= 0:
                    allowed = self.budget_total if limit is None else budget
                    raise self._kill("timeout", f"{'your function' if what == 'running your code' else what} did "
                                                f"not finish within {allowed:g} s (an endless loop? a very slow "
                                                f"one?)")
                ready, _, _ = select.select([self.rep_fd], [], [], min(left, 0.1))
                if ready:
                    self.reader.feed()
                elif self.process is not None and self.process.poll() is not None:
                    # The supervisor is gone (the worker died, or the learner's code killed it). A process
                    # the learner forked may still hold the pipe open: read what is there, and stop waiting.
                    while select.select([self.rep_fd], [], [], 0)[0] and not self.reader.closed:
                        self.reader.feed()
                    self.reader.closed = True
        finally:
            if limit is None:
                self.budget -= time.monotonic() - start

    def _kill(self, status: str, message: str) -> LearnerProcessEnded:
        self.ended = LearnerProcessEnded(status, message)
        if self.process is not None:
            _kill_group(self.process)
        return self.ended

    def _ended_now(self, what: str) -> LearnerProcessEnded:
        """The child's pipes closed: find out why from the supervisor's exit status."""
        code = None
        if self.process is not None:
            try:
                code = self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                code = None
        limit_gb = self.memory_bytes / 2**30
        if code is not None and code < 0:
            name = _signal_name(-code)
            message = (f"the grading process that runs your code was killed with {name} while {what}: does your "
                       f"code signal its parent (os.kill(os.getppid(), ...))? Your functions should only compute "
                       f"and return")
        elif code is not None and code >= 128:
            sig = code - 128
            if sig == signal.SIGKILL:
                message = (f"your code was killed (SIGKILL) while {what}: most likely it ran the machine out of "
                           f"memory (the grader allows {limit_gb:g} GB)")
            else:
                message = f"your code crashed the interpreter with {_signal_name(sig)} while {what}"
        elif code is not None:
            message = (f"the process running your code exited with exit code {code} while {what} (os._exit? "
                       f"a crash?)")
        else:
            message = f"the process running your code stopped answering while {what}"
        self.ended = LearnerProcessEnded("crash", message)
        if self.process is not None:
            _kill_group(self.process)
        return self.ended

    # -- calls
    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        if self.ended is not None:
            raise self.ended
        callbacks: list = []
        torch = sys.modules.get("torch")
        grad = bool(torch.is_grad_enabled()) if torch is not None else True
        message = {"op": "call", "fn": name, "grad": grad,
                   "args": wire.encode(list(args), callbacks), "kwargs": wire.encode(dict(kwargs), callbacks)}
        self._send(message)
        while True:
            reply = self._receive("running your code")
            op = reply.get("op")
            if op == "callback":
                self._run_callback(callbacks, reply)
                continue
            break
        self.violations += [v for v in (reply.get("violations") or []) if isinstance(v, dict)]
        mutated = reply.get("mutated")
        if mutated:
            self._mirror(args, kwargs, mutated)
        if op == "return":
            try:
                return wire.decode(reply["value"])
            except wire.WireError as err:
                raise GradeError(f"your function returned something the grader cannot read ({err})") from None
        if op == "raise":
            raise rebuild_error(str(reply.get("type")), bool(reply.get("builtin")), str(reply.get("message")),
                                str(reply.get("traceback")))
        if op == "exit_called":
            err = LearnerExit(f"your code called sys.exit({reply.get('code')}); return a value instead")
            err.type_name = "SystemExit"
            raise err
        if op == "unreadable":
            raise GradeError(f"your function returned a value the grader cannot read: {reply.get('message')}")
        raise self._kill("error", f"the process running your code answered {op!r}, which the grader does not know")

    def _run_callback(self, callbacks: list, request: dict) -> None:
        try:
            fn = callbacks[int(request["id"])]
            args = wire.decode(request["args"])
            kwargs = wire.decode(request["kwargs"])
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise TypeError("malformed callback arguments")
            value = fn(*args, **kwargs)
            reply = {"op": "callback_result", "ok": True, "value": wire.encode(value)}
        except Exception as err:  # the learner called our function wrongly: tell them, in their process
            reply = {"op": "callback_result", "ok": False, "type": type(err).__name__, "message": str(err)[:2000]}
        self._send(reply)

    def _mirror(self, args: tuple, kwargs: dict, mutated: dict) -> None:
        if mutated.get("unreadable"):
            raise GradeError("your function changed one of its arguments in place into something the grader cannot "
                             "read; compute new values instead of modifying the inputs")
        try:
            new_args, new_kwargs = wire.decode(mutated["args"]), wire.decode(mutated["kwargs"])
        except (wire.WireError, KeyError):
            raise GradeError("your function changed its arguments in place in a way the grader cannot read") from None
        if not (isinstance(new_args, list) and len(new_args) == len(args) and isinstance(new_kwargs, dict)):
            raise GradeError("your function changed its arguments in place in a way the grader cannot read")
        for old, new in zip(args, new_args):
            _mirror_value(old, new)
        for key, old in kwargs.items():
            if key in new_kwargs:
                _mirror_value(old, new_kwargs[key])

    # -- output and violations
    def take_output(self) -> tuple[str, int]:
        """(text kept, bytes printed) since the last call: everything the child wrote before now."""
        if self.ended is not None or self.process is None or self.process.poll() is not None:
            return self.drain.segment(timeout=1.0)
        marker = b"\n<<course-grader-" + secrets.token_hex(8).encode() + b">>\n"
        self.drain.expect(marker)
        try:
            self._send({"op": "sync", "marker": marker.decode().strip("\n")})
            saved = self.budget
            self.budget = 10.0
            try:
                reply = self._receive("flushing its output")
            finally:
                self.budget = saved
            if reply.get("op") != "synced":
                raise self._kill("error", "the process running your code answered out of turn")
        except LearnerProcessEnded:
            pass
        return self.drain.segment(timeout=5.0)

    def pop_violations(self) -> list[dict]:
        found, self.violations = self.violations, []
        return found


class LearnerFunction:
    """What a check receives as ``fn``: calling it runs the learner's function in the child."""

    def __init__(self, process: LearnerProcess, name: str):
        self.process, self.__name__ = process, name

    def __call__(self, *args, **kwargs):
        return self.process.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<your function {self.__name__}>"


# ----------------------------------------------------------------------------- helpers


def _mirror_value(old: Any, new: Any) -> None:
    """Make ``old`` (the grader's argument) hold what the learner's copy holds after the call."""
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    changed_text = ("your function changed one of its inputs in place in a way the grader cannot copy back; "
                    "compute new values instead")
    if torch is not None and isinstance(old, torch.Tensor):
        if not isinstance(new, torch.Tensor):
            raise GradeError(changed_text)
        if old.shape == new.shape and old.dtype == new.dtype:
            if not torch.equal(old, new):
                try:
                    with torch.no_grad():
                        old.copy_(new)
                except RuntimeError:
                    raise GradeError(changed_text) from None
            return
        try:
            with torch.no_grad():
                old.set_(new.detach().clone().to(old.dtype) if old.dtype != new.dtype else new.detach().clone())
        except RuntimeError:
            raise GradeError(changed_text) from None
        return
    if torch is not None and isinstance(old, torch.Generator):
        if isinstance(new, torch.Generator):
            old.set_state(new.get_state())
        return
    if np is not None and isinstance(old, np.ndarray):
        if not (isinstance(new, np.ndarray) and new.shape == old.shape and old.flags.writeable):
            raise GradeError(changed_text)
        np.copyto(old, new, casting="unsafe")
        return
    if isinstance(old, list) and isinstance(new, list):
        if len(old) == len(new) and all(type(a) is type(b) or _both_tensors(a, b) for a, b in zip(old, new)):
            for i, (a, b) in enumerate(zip(old, new)):
                if _is_mutable(a):
                    _mirror_value(a, b)
                elif a != b or type(a) is not type(b):
                    old[i] = b
        else:
            old[:] = new
        return
    if isinstance(old, dict) and isinstance(new, dict):
        if list(old.keys()) == list(new.keys()):
            for key in old:
                if _is_mutable(old[key]):
                    _mirror_value(old[key], new[key])
                elif not _equal_plain(old[key], new[key]):
                    old[key] = new[key]
        else:
            old.clear()
            old.update(new)
        return
    if isinstance(old, set) and isinstance(new, (set, frozenset)):
        old.clear()
        old.update(new)
        return
    if isinstance(old, tuple) and isinstance(new, tuple) and len(old) == len(new):
        for a, b in zip(old, new):
            if _is_mutable(a):
                _mirror_value(a, b)


def _both_tensors(a, b) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)


def _is_mutable(value: Any) -> bool:
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    if torch is not None and isinstance(value, (torch.Tensor, torch.Generator)):
        return True
    if np is not None and isinstance(value, np.ndarray):
        return True
    return isinstance(value, (list, dict, set, tuple))


def _equal_plain(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (the supervisor, the worker, anything it forked)."""
    if os.name == "posix":
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
    else:
        try:
            process.kill()
        except OSError:
            pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _grow_pipe(fd: int) -> None:
    """A 1 MB pipe (Linux), so printing in bulk costs fewer round trips."""
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
    except (ImportError, OSError, AttributeError):
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
