#!/usr/bin/python3
"""Time ccdproc's median combine of 5 frames of 4096 x 4096 float32, the case that
tests/bench/bench_detector.cpp (BM_Combine5x4k_Median) measures for kspecdr.

  /usr/bin/python3 scripts/bench_ccdproc_combine.py [--repeat 5] [--size 4096] [--frames 5]

Needs ccdproc (Debian: apt-get install python3-ccdproc); the tests do not. The frames are Gaussian
noise (mean 1000, sigma 5), like the C++ benchmark's. Three timings, each the median of --repeat
runs on one core, frames already in memory:

  ccdproc.Combiner.median_combine   the call a ccdproc user makes (masked median and its
                                    uncertainty, sigma of the stack / sqrt(n));
  ccdproc.combine(method='median')  the convenience function (same work, plus list handling);
  numpy.median(axis=0)              the floor of a plain median over the stack, for reference.

Prints one Markdown table (the one in docs/benchmarks.md).
"""
import argparse
import os
import statistics
import time

# One core, like the C++ benchmark: BLAS/OpenMP threads would otherwise blur the comparison.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--frames", type=int, default=5)
    args = ap.parse_args()

    import astropy
    import astropy.units as u
    import ccdproc
    from astropy.nddata import CCDData

    rng = np.random.default_rng(1)
    frames = [rng.normal(1000.0, 5.0, (args.size, args.size)).astype(np.float32) for _ in range(args.frames)]
    ccds = [CCDData(f, unit=u.electron) for f in frames]
    stack = np.stack(frames)

    def combiner():
        return ccdproc.Combiner(ccds).median_combine()

    def combine_fn():
        return ccdproc.combine(ccds, method="median", dtype=np.float32)

    def numpy_median():
        return np.median(stack, axis=0)

    # The results agree with a plain median (a check that the timed calls do the same thing).
    ref = numpy_median()
    assert np.allclose(np.asarray(combiner().data), ref)

    rows = [
        ("ccdproc.Combiner.median_combine", timed(combiner, args.repeat)),
        ("ccdproc.combine(method='median')", timed(combine_fn, args.repeat)),
        ("numpy.median(axis=0)", timed(numpy_median, args.repeat)),
    ]
    mb = args.frames * args.size * args.size * 4 / 1e6
    print(f"{args.frames} x {args.size}^2 float32 ({mb:.0f} MB), median of {args.repeat} runs; "
          f"ccdproc {ccdproc.__version__}, astropy {astropy.__version__}, numpy {np.__version__}\n")
    print("| implementation | median time (s) | min–max (s) | throughput (MB/s) |")
    print("| --- | --- | --- | --- |")
    for name, (med, lo, hi) in rows:
        print(f"| {name} | {med:.3f} | {lo:.3f}–{hi:.3f} | {mb / med:.0f} |")


if __name__ == "__main__":
    main()
