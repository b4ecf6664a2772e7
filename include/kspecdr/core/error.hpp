#pragma once
// Typed exceptions that carry where a problem happened: the file, HDU, keyword,
// exposure and aperture it concerns, so that a message read in a batch log names
// what to look at and what to do.
#include <optional>
#include <stdexcept>
#include <string>

namespace kspecdr {

/// Where an error happened. Every field is optional; `describe()` prints those that are set.
struct ErrorContext {
  std::string file;
  std::string hdu;       ///< HDU number or EXTNAME
  std::string keyword;   ///< FITS keyword / config key / dataset name
  std::string exposure;  ///< exposure (frame) name
  std::string aperture;  ///< aperture / fiber name
  std::string describe() const;
};

/// Base of every kspecdr exception.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, ErrorContext ctx = {});
  const ErrorContext& context() const noexcept { return ctx_; }
  /// The bare message, without the context suffix.
  const std::string& message() const noexcept { return message_; }
  /// Adds context that an outer layer knows (e.g. the exposure) without losing the original.
  void add_context(const ErrorContext& outer);

 private:
  void rebuild();
  std::string message_;
  ErrorContext ctx_;
  std::string full_;

 public:
  const char* what() const noexcept override { return full_.c_str(); }
};

/// A FITS file could not be read or written (CFITSIO status is in the message).
class FitsError : public Error { using Error::Error; };
/// An HDF5 call failed.
class Hdf5Error : public Error { using Error::Error; };
/// A configuration or instrument profile is wrong: exit code 2, nothing done.
class ConfigError : public Error { using Error::Error; };
/// Input data do not fit what a stage needs (shape, missing keyword, NaNs, too few lines ...).
class DataError : public Error { using Error::Error; };
/// A numerical method did not converge or has no solution.
class NumericalError : public Error { using Error::Error; };

}  // namespace kspecdr
