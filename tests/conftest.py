"""Test setup: eight fake CPU devices so every mesh path runs on CPU; shared tiny-model fixtures."""
import atexit
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the whole session, shared with the subprocesses tests launch (pipelines,
# resumes after a signal, jax.distributed workers): a tiny model's stages are the same programs in every
# test that runs them, and compiling them again dominates the suite's time on CPU. Fresh per session, so
# no run reads another's executables. pytest-xdist's workers inherit it from the controller (which loads this
# file first). A size limit turns on the cache's file lock: without it, a process can read an entry another
# is still writing (the two-process tests, two workers compiling the same program).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="drift_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(16 << 30))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
