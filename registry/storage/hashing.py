"""Running content hashes whose state can be saved with an upload and continued elsewhere.

Python's hashlib cannot export a running hash, so a push whose PATCH and PUT land on
different instances would have to re-read the whole blob to verify its digest. OpenSSL's
own SHA-2 contexts are plain structs (public since 0.9.8, unchanged in 1.1 and 3.x): we
drive them through ctypes, on the libcrypto that Python itself loaded, and save the struct's
bytes with the upload. Where that library cannot be found or fails its self-test, hashes
still work (through hashlib) but report no state, and the finish re-reads the stored bytes.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import struct
from pathlib import Path
from typing import Protocol

STATE_VERSION = "v1"
# sizeof(SHA256_CTX) and sizeof(SHA512_CTX) in OpenSSL; digest lengths in bytes; the
# message block size. Each struct ends with `unsigned int num, md_len`.
_CONTEXTS = {"sha256": ("SHA256", 112, 32), "sha512": ("SHA512", 216, 64)}
_BLOCK = {"sha256": 64, "sha512": 128}


class RunningHash(Protocol):
    algorithm: str

    def update(self, data: bytes) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> RunningHash: ...
    def state(self) -> str | None: ...


def _libcrypto() -> ctypes.CDLL | None:
    import _hashlib  # noqa: F401  (loads the libcrypto that Python's hashlib uses)

    candidates = []
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1]
            if "/libcrypto" in path and path not in candidates:
                candidates.append(path)
    except OSError:
        pass
    found = ctypes.util.find_library("crypto")
    if found:
        candidates.append(found)
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            for prefix, _, _ in _CONTEXTS.values():
                for suffix in ("_Init", "_Update", "_Final"):
                    getattr(lib, prefix + suffix).restype = ctypes.c_int
            return lib
        except (OSError, AttributeError):
            continue
    return None


class _OpenSSLHash:
    """One SHA-2 computation in an OpenSSL context buffer; the buffer is the state."""

    def __init__(self, algorithm: str, context: ctypes.Array[ctypes.c_char]):
        self.algorithm = algorithm
        self._context = context
        prefix, _, _ = _CONTEXTS[algorithm]
        self._update = getattr(_LIB, prefix + "_Update")
        self._final = getattr(_LIB, prefix + "_Final")

    @classmethod
    def new(cls, algorithm: str) -> _OpenSSLHash:
        prefix, size, _ = _CONTEXTS[algorithm]
        context = ctypes.create_string_buffer(size)
        if getattr(_LIB, prefix + "_Init")(context) != 1:
            raise RuntimeError(f"{prefix}_Init failed")
        return cls(algorithm, context)

    def update(self, data: bytes) -> None:
        if data:
            self._update(self._context, bytes(data), ctypes.c_size_t(len(data)))

    def hexdigest(self) -> str:
        _, size, length = _CONTEXTS[self.algorithm]
        scratch = ctypes.create_string_buffer(self._context.raw, size)  # Final consumes its context
        out = ctypes.create_string_buffer(length)
        self._final(out, scratch)
        return out.raw.hex()

    def copy(self) -> _OpenSSLHash:
        _, size, _ = _CONTEXTS[self.algorithm]
        return _OpenSSLHash(self.algorithm, ctypes.create_string_buffer(self._context.raw, size))

    def state(self) -> str:
        encoded = base64.b64encode(self._context.raw).decode()
        return f"{self.algorithm}:{STATE_VERSION}:{encoded}"


class _PlainHash:
    """hashlib, for where OpenSSL's contexts are not reachable: no state to save."""

    def __init__(self, algorithm: str, inner: object | None = None):
        self.algorithm = algorithm
        self._inner = inner or hashlib.new(algorithm)

    def update(self, data: bytes) -> None:
        self._inner.update(data)  # type: ignore[attr-defined]

    def hexdigest(self) -> str:
        return self._inner.hexdigest()  # type: ignore[attr-defined]

    def copy(self) -> _PlainHash:
        return _PlainHash(self.algorithm, self._inner.copy())  # type: ignore[attr-defined]

    def state(self) -> None:
        return None


def _self_test() -> bool:
    """Split hashing, saving and restoring must agree with hashlib, or we do not use it."""
    try:
        for algorithm in _CONTEXTS:
            first = _OpenSSLHash.new(algorithm)
            first.update(b"berth" * 100)
            restored = restore_hash(first.state())
            if restored is None:
                return False
            restored.update(b"x" * 1000)
            if restored.hexdigest() != hashlib.new(algorithm, b"berth" * 100 + b"x" * 1000).hexdigest():
                return False
    except (AttributeError, OSError, RuntimeError, ctypes.ArgumentError):
        return False
    return True


def new_hash(algorithm: str) -> RunningHash:
    if _LIB is not None and algorithm in _CONTEXTS:
        return _OpenSSLHash.new(algorithm)
    return _PlainHash(algorithm)


def restore_hash(state: str | None) -> RunningHash | None:
    """The running hash a `state()` text describes; None if it cannot be continued here."""
    if not state or _LIB is None:
        return None
    algorithm, _, rest = state.partition(":")
    version, _, encoded = rest.partition(":")
    if algorithm not in _CONTEXTS or version != STATE_VERSION:
        return None
    _, size, _ = _CONTEXTS[algorithm]
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        return None
    if len(raw) != size:
        return None
    # A saved context whose buffer count or digest length is off would make OpenSSL copy
    # out of bounds: refuse it (only a writer with storage access could produce one).
    buffered, digest_length = struct.unpack_from("=II", raw, size - 8)
    if buffered >= _BLOCK[algorithm] or digest_length != _CONTEXTS[algorithm][2]:
        return None
    return _OpenSSLHash(algorithm, ctypes.create_string_buffer(raw, size))


_LIB = _libcrypto()
if _LIB is not None and not _self_test():
    _LIB = None


def states_available() -> bool:
    """Whether running hashes can be saved here (else finishing re-reads the bytes)."""
    return _LIB is not None
