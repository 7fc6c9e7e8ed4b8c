/* fastact_apply.c: C code that runs fastact's kernels through the function pointers it is handed.
 *
 * A small library (build: cc -std=c99 -O2 -Wall -Werror -shared -fPIC fastact_apply.c -o
 * libfastact_apply.so) showing the calling convention of fastact.h on real work:
 *
 *   fastact_apply_rows_f32/_f64   a forward kernel over each row of a row-major matrix, with one
 *                                 parameter block per row (e.g. a per-row leaky slope);
 *   fastact_backward_rows_f32/_f64  the same for a backward kernel;
 *   fastact_check_gradient_f64    a central finite-difference check of a backward kernel against its
 *                                 forward, entirely in C: the largest |analytic - numeric| found.
 *
 * The tests (tests/test_capi.py) compile this file with the system C compiler, load it with ctypes,
 * pass it the addresses from fastact.capi.address() and compare every result with fastact's ufuncs.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "fastact.h"

/* params: rows blocks of nparams doubles (row r uses params + r * nparams); NULL: defaults for all. */
void fastact_apply_rows_f32(fastact_forward_f32 f, const float *x, float *y, int64_t rows,
                            int64_t cols, const double *params, int64_t nparams)
{
    for (int64_t r = 0; r < rows; ++r) {
        const double *p = params ? params + r * nparams : NULL;
        f(x + r * cols, y + r * cols, cols, p);
    }
}

void fastact_apply_rows_f64(fastact_forward_f64 f, const double *x, double *y, int64_t rows,
                            int64_t cols, const double *params, int64_t nparams)
{
    for (int64_t r = 0; r < rows; ++r) {
        const double *p = params ? params + r * nparams : NULL;
        f(x + r * cols, y + r * cols, cols, p);
    }
}

void fastact_backward_rows_f32(fastact_backward_f32 b, const float *dy, const float *x, float *dx,
                               int64_t rows, int64_t cols, const double *params, int64_t nparams)
{
    for (int64_t r = 0; r < rows; ++r) {
        const double *p = params ? params + r * nparams : NULL;
        b(dy + r * cols, x + r * cols, dx + r * cols, cols, p);
    }
}

void fastact_backward_rows_f64(fastact_backward_f64 b, const double *dy, const double *x,
                               double *dx, int64_t rows, int64_t cols, const double *params,
                               int64_t nparams)
{
    for (int64_t r = 0; r < rows; ++r) {
        const double *p = params ? params + r * nparams : NULL;
        b(dy + r * cols, x + r * cols, dx + r * cols, cols, p);
    }
}

/* max over i of |f'(x[i]) - (f(x[i] + h) - f(x[i] - h)) / 2h|, with f' from the backward kernel
 * (dy = 1). The points should stay more than h away from kinks. Returns -1 on a NaN result. */
double fastact_check_gradient_f64(fastact_forward_f64 f, fastact_backward_f64 b, const double *x,
                                  int64_t n, const double *params, double h)
{
    double worst = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        double xp = x[i] + h, xm = x[i] - h, yp, ym, one = 1.0, d;
        f(&xp, &yp, 1, params);
        f(&xm, &ym, 1, params);
        b(&one, &x[i], &d, 1, params);
        double err = fabs(d - (yp - ym) / (2.0 * h));
        if (isnan(err))
            return -1.0;
        if (err > worst)
            worst = err;
    }
    return worst;
}
