#pragma once
// The EX file: extracted spectra on detector pixels. Its layout — every HDU,
// table column and keyword with type, unit and meaning — is the one table
// `ex_format()`, which the writer and reader follow and from which
// docs/formats.md can be generated.
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/core/spectrum.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/format.hpp"

namespace kspecdr::extract {

/// One item of a file format (kspecdr/io/format.hpp).
using FormatItem = io::FormatItem;

/// EXTNAMEs of the optional images a slit exposure carries when the sky model is asked for
/// (ExStageConfig::write_sky_image): the 2D sky, its variance, and the sky windows.
inline constexpr const char* kSkyModelHdu = "SKYMODEL";
inline constexpr const char* kSkyModelVarHdu = "SKYMODEL_VAR";
inline constexpr const char* kSkyWindowsHdu = "SKYWIN";

/// Name, unit and meaning of a known optional image.
struct ExtraImageFormat {
  const char* extname;
  const char* unit;
  const char* description;
};
/// The optional sky images, in the order the EX stage writes them.
extern const ExtraImageFormat kSkyImages[3];

/// The EX layout, the items every EX file holds (the optional images are listed in kSkyImages): PRIMARY flux (NAPER × NPIX, e-), VARIANCE, VAR_STAR, VAR_SKY, VAR_READ, VAR_CAL, SKY, MASK,
/// OFFSET, WIDTH, PEAK, MASKFRAC, REJECTED images; FIBRES and DIAGNOSTICS tables; their keywords; then
/// any optional 2D images of SpectrumSet::extra_images (NY × NX, float32, BUNIT and EXTDESC keywords),
/// e.g. SKYMODEL, SKYMODEL_VAR and SKYWIN. FIBRES gains one MAG_* column per magnitude name that any
/// aperture carries.
const std::vector<FormatItem>& ex_format();

/// Writes `spectra` to `path` atomically (temporary name, renamed when complete). Throws Error if the file
/// exists and `overwrite` is false, FitsError on write failures.
void write_ex_file(const std::filesystem::path& path, const SpectrumSet& spectra, bool overwrite);

/// Reads an EX file written by write_ex_file. Throws FitsError/DataError naming the file and HDU.
SpectrumSet read_ex_file(const std::filesystem::path& path);
/// The primary header, apertures (FIBRES) and per-aperture diagnostics of an EX file, without its pixels (the
/// images, MASK and extra images stay empty): what a summary of many files needs, read quickly.
SpectrumSet read_ex_tables(const std::filesystem::path& path);

// ---- shared with the RED file, which is an EX layout on a wavelength grid plus HDUs of its own

/// Appends the EX layout's HDUs for `spectra` to an empty file: the images (primary header = spectra.header
/// plus NAPER), MASK, FIBRES, DIAGNOSTICS and the extra images.
void write_spectrum_hdus(fits::Fits& f, const SpectrumSet& spectra);
/// Reads what write_spectrum_hdus wrote; image HDUs after the tables become extra images except those
/// named in `skip` (HDUs the caller reads itself). `path` names the file in messages.
SpectrumSet read_spectrum_hdus(fits::Fits& f, const std::string& path, const std::vector<std::string>& skip);
/// The primary header, FIBRES and DIAGNOSTICS of that layout, no pixels.
SpectrumSet read_spectrum_tables(fits::Fits& f, const std::string& path);
/// Throws DataError when an extra image name is empty, repeated, or one of the layout's own HDUs or `reserved`.
void check_extra_names(const SpectrumSet& spectra, const std::string& path, const std::vector<std::string>& reserved);

}  // namespace kspecdr::extract
