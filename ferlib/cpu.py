"""What this CPU offers MXNet's oneDNN kernels: AVX-512 BF16, Intel's AMX tiles switched on, and one
OpenMP team of threads (:func:`keep_one_openmp_team`).

MXNet 1.9.1 carries oneDNN 2.4, which has AMX kernels for bfloat16 convolutions (Intel Sapphire
Rapids and newer) but leaves them off: it uses them only when ``DNNL_MAX_CPU_ISA`` names AMX, and
then it executes AMX instructions without asking Linux for the tile registers, which kills the
process with SIGILL. :func:`enable_amx` does both halves, before ``import mxnet``, from
``ferlib/__init__.py``; :func:`forget_amx_variable` removes the variable again once oneDNN has
read it, because a child process loses the permission at ``execve`` but would inherit the
variable. This module imports no MXNet.
"""
import ctypes
import os
import platform
import sys

#: oneDNN's names for its ISA cap, either of which a user may set; ferlib sets the second.
ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
AMX_ISA = "AVX512_CORE_AMX"
# Linux x86-64: arch_prctl's syscall number, its "request extended state permission" code, and
# the AMX tile data's state component (arch/x86/include/uapi/asm/prctl.h, asm/fpu/types.h).
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18

#: MXNet copies an array of this variable's number of elements or more with OpenMP (by default
#: MXNET_PARALLEL_COPY_SIZE); ferlib's SERIAL_COPY_SIZE, the largest its ``index_t`` holds, keeps every copy serial.
PARALLEL_COPY_VARIABLE = "MXNET_CPU_PARALLEL_SIZE"
MXNET_PARALLEL_COPY_SIZE = 200_000
SERIAL_COPY_SIZE = 2**31 - 1

_amx_enabled = False
_variable_set_by_ferlib = False


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The flags of the first ``flags`` line of ``/proc/cpuinfo``, as a frozenset (empty off Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU multiplies bfloat16 in hardware: the ``avx512_bf16`` flag (AMD Zen 4,
    Intel Cooper Lake, Sapphire Rapids and newer). Without it oneDNN would emulate bfloat16,
    more slowly than float32."""
    return "avx512_bf16" in cpu_flags(cpuinfo)


def cpu_has_amx(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU has AMX tiles with bfloat16 (``amx_tile`` and ``amx_bf16``: Intel Sapphire Rapids
    and newer)."""
    return {"amx_tile", "amx_bf16"} <= cpu_flags(cpuinfo)


def amx_enabled():
    """Whether :func:`enable_amx` switched AMX on for oneDNN in this process."""
    return _amx_enabled


def bfloat16_is_fast(cpuinfo="/proc/cpuinfo"):
    """Whether bfloat16 training steps beat float32 here: AVX-512 BF16, and AMX on where the CPU has it.

    On an Intel CPU with AMX, oneDNN 2.4 without AMX runs the bfloat16 step at 0.68x float32's speed,
    with AMX at 1.96x (``bench/bench_train_loop.py``, README "bfloat16 on the CPU"); AMD Zen 4 has no
    AMX, and its AVX-512 BF16 kernels run at 1.5x."""
    return why_not_bfloat16(cpuinfo) is None


def why_not_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Why bfloat16 training steps would be the slower here, in a few words; None where they are the faster.

    A run says it, so that a reader whose epochs take three times the README's knows why (float32 on
    an AVX2-only AMD EPYC: README, "bfloat16 on the CPU")."""
    if not cpu_has_bfloat16(cpuinfo):
        return "this CPU has no AVX-512 BF16"
    if cpu_has_amx(cpuinfo) and not amx_enabled():
        return "AMX is off, and AVX-512 BF16 without it is slower than float32"
    return None


def keep_one_openmp_team():
    """Keep MXNet's copies from numpy serial, so that OpenMP keeps one team of threads; before ``import mxnet``.

    MXNet copies an array of 200,000 elements or more with OpenMP. A validation batch of 256 faces is
    one (256 x 48 x 48), copied in the Python thread, which then keeps a second OpenMP team beside
    that of MXNet's worker thread. With more threads than cores a waiting libgomp thread spins 100
    times before it sleeps instead of 300,000, so from the first validation on every training step
    puts its threads to sleep and wakes them: about 470 voluntary context switches per batch instead
    of 2-3, and the epoch loop 1.14x slower on the AMD machine (``bench/bench_openmp_team.py``;
    ``docs/results.md``, "bfloat16 on the CPU in detail"). A serial copy is a ``memcpy``; a training
    batch of 64 faces was below the threshold anyway. A value the user set stands.
    """
    os.environ.setdefault(PARALLEL_COPY_VARIABLE, str(SERIAL_COPY_SIZE))


def _request_amx_permission():
    """Ask Linux (5.16 or newer) for this process's use of the AMX tile registers; whether it agreed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def enable_amx(cpuinfo="/proc/cpuinfo"):
    """Let oneDNN use AMX for bfloat16 in this process, where the CPU has it; whether it now may.

    Must run before MXNet's first oneDNN kernel, which reads the ISA cap once. A cap the user set
    stands (the permission is asked for all the same); AMX counts as on only if that cap allows it.
    """
    global _amx_enabled, _variable_set_by_ferlib
    if _amx_enabled:
        return True
    if sys.platform != "linux" or platform.machine() != "x86_64" or not cpu_has_amx(cpuinfo):
        return False
    if not _request_amx_permission():
        return False
    user_cap = next((os.environ[name] for name in ONEDNN_ISA_VARIABLES if os.environ.get(name)), None)
    if user_cap is None:
        os.environ["DNNL_MAX_CPU_ISA"] = AMX_ISA
        _variable_set_by_ferlib = True
    _amx_enabled = user_cap is None or user_cap.upper() in (AMX_ISA, "ALL")
    return _amx_enabled


def forget_amx_variable(mx):
    """Run one oneDNN kernel, so that oneDNN reads its ISA cap now, then remove the cap ferlib set.

    Child processes (a notebook kernel, a model-server worker) lose the AMX permission at ``execve``;
    one that imported MXNet without ferlib would otherwise inherit the cap and die of SIGILL.
    ``mx`` is the imported ``mxnet`` module.
    """
    global _variable_set_by_ferlib
    if not _variable_set_by_ferlib:
        return
    one = mx.nd.ones((1, 1, 1, 1), ctx=mx.cpu())
    mx.nd.Convolution(one, one, kernel=(1, 1), num_filter=1, no_bias=True).wait_to_read()
    os.environ.pop("DNNL_MAX_CPU_ISA", None)
    _variable_set_by_ferlib = False
