#include "kspecdr/core/error.hpp"

namespace kspecdr {

std::string ErrorContext::describe() const {
  std::string s;
  auto add = [&s](const char* label, const std::string& v) {
    if (v.empty()) return;
    s += s.empty() ? " [" : ", ";
    s += label;
    s += v;
  };
  add("file ", file);
  add("HDU ", hdu);
  add("keyword ", keyword);
  add("exposure ", exposure);
  add("aperture ", aperture);
  if (!s.empty()) s += "]";
  return s;
}

Error::Error(const std::string& what, ErrorContext ctx)
    : std::runtime_error(what), message_(what), ctx_(std::move(ctx)) {
  rebuild();
}

void Error::add_context(const ErrorContext& outer) {
  auto fill = [](std::string& mine, const std::string& theirs) {
    if (mine.empty()) mine = theirs;
  };
  fill(ctx_.file, outer.file);
  fill(ctx_.hdu, outer.hdu);
  fill(ctx_.keyword, outer.keyword);
  fill(ctx_.exposure, outer.exposure);
  fill(ctx_.aperture, outer.aperture);
  rebuild();
}

void Error::rebuild() { full_ = message_ + ctx_.describe(); }

}  // namespace kspecdr
