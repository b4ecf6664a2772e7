#include "kspecdr/core/trace.hpp"

#include <fmt/format.h>

#include "kspecdr/core/error.hpp"

namespace kspecdr {

void legendre_basis(double u, double* out, int n) {
  if (n < 0) return;
  out[0] = 1.0;
  if (n >= 1) out[1] = u;
  for (int k = 2; k <= n; ++k) out[k] = ((2.0 * k - 1.0) * u * out[k - 1] - (k - 1.0) * out[k - 2]) / k;
}

double LegendreSeries::operator()(double x) const {
  if (coeffs.empty()) return 0.0;
  const double u = to_unit(x);
  // Clenshaw recurrence: stable and allocation-free.
  double b1 = 0.0, b2 = 0.0;
  for (int k = static_cast<int>(coeffs.size()) - 1; k >= 1; --k) {
    const double alpha = (2.0 * k + 1.0) / (k + 1.0) * u;
    const double beta = -(k + 1.0) / (k + 2.0);
    const double b0 = coeffs[static_cast<std::size_t>(k)] + alpha * b1 + beta * b2;
    b2 = b1;
    b1 = b0;
  }
  return coeffs[0] + u * b1 - 0.5 * b2;
}

double LegendreSeries::derivative(double x) const {
  if (coeffs.size() < 2 || xmax <= xmin) return 0.0;
  const double u = to_unit(x);
  // P'_k(u) from the recurrence P'_k = k P_{k-1} + u P'_{k-1}.
  double p_prev = 1.0, p = u, dp_prev = 0.0, dp = 1.0;
  double sum = coeffs[1];
  for (std::size_t k = 2; k < coeffs.size(); ++k) {
    const double kk = static_cast<double>(k);
    const double p_next = ((2.0 * kk - 1.0) * u * p - (kk - 1.0) * p_prev) / kk;
    const double dp_next = kk * p + u * dp;
    p_prev = p;
    p = p_next;
    dp_prev = dp;
    dp = dp_next;
    sum += coeffs[k] * dp;
  }
  (void)dp_prev;
  return sum * 2.0 / (xmax - xmin);
}

std::string to_string(TraceStatus s) {
  switch (s) {
    case TraceStatus::Ok: return "ok";
    case TraceStatus::Dead: return "dead";
    case TraceStatus::NotFound: return "not-found";
    case TraceStatus::Failed: return "failed";
  }
  return "unknown";
}

std::size_t TraceSet::index_of(const std::string& name) const {
  for (std::size_t i = 0; i < traces.size(); ++i)
    if (traces[i].info.name == name) return i;
  throw DataError(fmt::format("no trace named {} in the trace set", name), ErrorContext{.aperture = name});
}

}  // namespace kspecdr
