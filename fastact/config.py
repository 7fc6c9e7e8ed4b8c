"""Tunables, each with the reason for its value.

The size thresholds and workspace bounds are read at call time, so a user (or a benchmark) may
change them after import::

    import fastact
    fastact.config.PARALLEL_MIN_SIZE = 1 << 20

``THREADING_LAYER``, ``CACHE_DIR`` and ``DISABLE_CACHE`` are read once, when fastact is imported
(Numba starts its threading layer once per process, and kernels are bound to their cache when they
are built): set their environment variables before ``import fastact``.
"""

import os

#: Memory-bound elementwise kernels (the ReLU family: ~0.2-0.5 ns/element on one core) switch from
#: the serial to the parallel (both cores) loop at this many elements. Measured by bench/threshold.py
#: (2026-11-23, idle 2-core EPYC, TBB): the fork/join costs ~3-6 us; the parallel ReLU loop is 4-6x
#: slower at 2^10-2^12, 1.30x slower at 2^16, and faster from 2^17 (0.96x, then 0.5-0.8x).
PARALLEL_MIN_SIZE = 1 << 17

#: The backwards of the non-transcendental activations (three arrays, dy * f'(x)) from this many
#: elements: bench/threshold.py on 2026-11-25 (bench/results/2026-11-25/threshold.txt) found the
#: parallel loop faster from 2^16 for the backwards of relu, leaky_relu, relu6 and hardswish alike.
PARALLEL_MIN_SIZE_BACKWARD = 1 << 16

#: Transcendental kernels (ELU ~1 ns/element, GELU ~3 ns/element on one core) earn the fork/join back
#: much sooner. Same run: the parallel GELU loop is 1.08x slower at 2^12 and faster from 2^13 (0.83x,
#: then 0.55-0.7x); 2^14 leaves room for the cheaper ones (ELU, SELU: a third of GELU's work).
PARALLEL_MIN_SIZE_TRANSCENDENTAL = 1 << 14

#: Convolutions whose output images have at least this many pixels (P*Q) run one GEMM per image
#: straight into the NCHW output (then the epilogue in place), so a forward needs no memory beyond the
#: column buffer; smaller images run one GEMM per tile into a buffer, since per-image GEMMs of a few
#: dozen columns lose BLAS efficiency (measured in docs/performance.md).
CONV_GEMM_INTO_OUTPUT_MIN_PQ = 256

#: Threading layer requested from Numba unless the user chose one (NUMBA_THREADING_LAYER, or
#: numba.config.THREADING_LAYER set before importing fastact). TBB is the only layer
#: that is fast for parallel loops here, safe when several Python threads call in at once (workqueue
#: aborts the process) and safe after fork() (OpenMP hangs the child). See docs/design.md.
THREADING_LAYER = os.environ.get("FASTACT_THREADING_LAYER", "tbb")

#: Where compiled kernels are cached on disk. A per-version, per-source-hash subdirectory is used below
#: it so that a new fastact never loads machine code compiled from older sources.
CACHE_DIR = os.environ.get("FASTACT_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastact")

#: Set FASTACT_DISABLE_CACHE=1 to compile in memory only (e.g. when measuring cold start).
DISABLE_CACHE = os.environ.get("FASTACT_DISABLE_CACHE", "0") not in ("", "0")

#: Upper bound on the im2col column buffer of one conv tile (bytes). The batch is cut into tiles of
#: as many images as fit: large enough that the GEMM's N dimension (images x output pixels) keeps BLAS
#: efficient, small enough that the buffer stays in the 32 MiB L3 and is reused across calls.
CONV_WORKSPACE_BYTES = 8 << 20

#: GEMMs below this many FLOPs run on one BLAS thread (see fastact/_blas.py for the measurement):
#: ~2e7 FLOPs take ~0.3 ms on one core, about where a second thread starts to pay.
BLAS_PARALLEL_MIN_FLOPS = 20_000_000

#: Convolutions run as one parallel loop over chunks of images with the GEMMs called from nopython
#: code (fastact/_gemm.py: SciPy's BLAS on one thread per worker, so TBB is the only pool) when that BLAS
#: could be set up; False forces the NumPy path (np.matmul per tile from Python), e.g. to compare them.
CONV_NOPYTHON_GEMM = True

#: A chunk of the fused convolution holds enough images for this many GEMM columns (images x output
#: pixels): one image from 16x16 up (its GEMM straight into the NCHW output), 4 images at 8x8.
CONV_CHUNK_MIN_COLUMNS = 256

#: One large image goes through the fused convolution by bands of output rows whose column buffer
#: holds at most K times this many bytes (K output channels), forward and backward: the single-thread
#: GEMM slows down once its column panel outgrows a budget that grows with K (see conv._band_rows).
CONV_BAND_BYTES_PER_CHANNEL = 10 << 10

#: Convolutions whose output rows have at most this many pixels build their column buffer through
#: precomputed gather maps (one loop per buffer row) instead of copying image rows: the 4x4 layers ran
#: 1.33-1.46x faster forward and 1.15-1.2x backward, 16->16 at 8x8 the same either way
#: (bench/results/2026-11-25/conv-gather-ab.txt); on 8x8 images the row copies are ahead.
CONV_GATHER_MAX_Q = 4

#: Chunks are dealt to this many slots per Numba thread (each slot owns one dweight partial in the
#: backward; threads take slots from a shared counter): more than one per thread so that a core slowed
#: by another process leaves its remaining slots to the other.
CONV_SLOTS_PER_THREAD = 4

#: ``conv2d(algorithm="auto")`` runs float32 3x3 stride-1 convolutions by Winograd F(4x4, 3x3)
#: (fastact.winograd); False keeps them on im2col (e.g. to compare the two inside a network).
CONV_WINOGRAD = True

#: ... when the input has at least this many channels: with 1 or 3 input channels the transforms cost
#: more than the multiplies they save (1->16 at 8x8 0.51x, 3->16 at 32x32 0.71x im2col's speed; from 8
#: channels on 1.0-1.7x: ``python bench/conv_report.py --rule``, bench/results/2026-12-07/winograd-rule.txt).
CONV_WINOGRAD_MIN_CHANNELS = 8

#: ... and at least this much work per image, ``2 * K * C * 9 * H * W`` FLOPs (a direct convolution's):
#: the Winograd kernels take about 10 s to compile on first use (then they are cached; raw:
#: bench/results/2026-12-07/compile_profile-net_res_deep.txt), and layers as
#: small as the digits net's (16 channels at 8x8: 0.3 MFLOP per image) save a fraction of a millisecond
#: per call, which a short job would not earn back; the mnist and CIFAR nets' layers (1.8-4.7 MFLOP per
#: image) save 1-3 ms per call at batch 64 (``python bench/conv_report.py --rule``). Per image, not per
#: call, so that a layer takes one method for every batch size (training and evaluation alike).
CONV_WINOGRAD_MIN_IMAGE_FLOPS = 1_000_000

#: ... and when the 4x4 output tiles covering the image are at least this full (the image's H * W over
#: the tiles' 16 * ceil(H / 4) * ceil(W / 4)): a 1x1 or 2x2 map (ResNet-18's last stages at 32x32) would
#: pay the 6x6 transforms and 36 products of a whole tile for one to four outputs.
CONV_WINOGRAD_MIN_TILE_USE = 0.5

#: ... and when the call has at least this many output positions (``N * H * W``): the weights are
#: transformed on every call (36 values per filter and input channel, through a float64 product), a
#: cost that a 512-channel layer's 7x7 map at batch 1 (49 positions; ResNet-18's last stage at 224x224)
#: does not earn back, while a batch of 64 CIFAR-size images does from 4x4 maps on. Per call, so a
#: small last batch of an epoch may take im2col where the others take Winograd (both within the error
#: bounds of docs/accuracy.md).
CONV_WINOGRAD_MIN_POSITIONS = 1024

#: Winograd F(4x4, 3x3) works on chunks of tiles whose transformed input and products (36 values per
#: tile per input and per output channel) take at most this many bytes, so that they stay in L2.
WINOGRAD_CHUNK_BYTES = 1 << 20

#: The fused convolution runs on one thread below this many FLOPs: handing slots to a helper thread
#: costs ~20 us (bench/slots.py: 19 us), and at 4.7 MFLOP two threads and one take about the same time.
CONV_PARALLEL_MIN_FLOPS = 4_000_000
