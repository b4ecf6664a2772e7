#pragma once
// Every knob of the detector stage (raw -> IM) in one plain struct with
// documented defaults. cli/ fills it from the command line or INI file; stage
// code never looks options up anywhere else.
#include <string>

namespace kspecdr::detector {

/// How a stack of frames is reduced to one per pixel.
enum class CombineMethod {
  Median,       ///< per-pixel median (robust, efficiency 2/pi for many frames)
  ClippedMean,  ///< per-pixel mean after rejecting outliers one at a time (leave-one-out sigma test)
};
std::string to_string(CombineMethod m);
/// "median" or "mean"/"clipped-mean"/"clippedmean"; throws ConfigError naming the text otherwise.
CombineMethod combine_method_from_string(const std::string& s);

struct DetectorConfig {
  // ---- combining stacks (master bias, master flat, master dark)
  CombineMethod bias_combine = CombineMethod::Median;
  CombineMethod flat_combine = CombineMethod::Median;
  CombineMethod dark_combine = CombineMethod::Median;
  /// Rejection threshold of ClippedMean, in standard deviations of the other frames' values.
  double combine_clip_sigma = 3.0;

  // ---- overscan
  /// "" = the instrument profile's method; otherwise "median" (one robust level per amplifier)
  /// or "poly" (a clipped polynomial along the readout direction).
  std::string overscan_method;
  /// Polynomial order for "poly"; -1 = the profile's overscan_order.
  int overscan_order = -1;
  /// Clipping threshold (sigma) of the overscan level and polynomial fits.
  double overscan_clip_sigma = 3.0;

  // ---- which calibrations to apply when they are given
  bool use_bias = true;   ///< subtract the master bias (residual structure after overscan)
  bool use_dark = true;   ///< subtract a master dark scaled by exposure time
  bool use_flat = true;   ///< divide by the pixel flat
  bool mask_saturated = true;

  // ---- master flat
  /// Window (pixels along the dispersion axis) of the local quartic that models the large-scale
  /// flat (lamp spectrum x slit/fiber illumination) row by row. Must be wider than pixel-to-pixel
  /// structure and short enough that a tilted or curved trace moves by less than about its
  /// profile width over half the window.
  double flat_smooth_px = 64.0;
  /// A pixel is illuminated when the large-scale model exceeds this fraction of the local
  /// maximum of the model along the spatial axis (fiber gaps and outside-slit pixels are not).
  double illumination_threshold = 0.1;
  /// ... and where the model is detected: above this many times its own noise. Where the lamp gives no
  /// light at all (an order-blocking filter's cut-off inside the detector, a vignetted corner) the local
  /// maximum is noise too, and the fraction alone would call half the noise illuminated.
  double illumination_min_snr = 5.0;
  /// Half-height (rows) of the window in which the local maximum of the model is taken.
  int illumination_halfwindow = 20;
  /// Pixel-flat values below this are flagged kMaskLowFlat (dead or dusty pixels).
  double low_flat_threshold = 0.5;
  /// Pixel-flat values above this are flagged kMaskBad (hot or non-linear pixels in the flats).
  double high_flat_threshold = 2.0;

  // ---- cosmic rays (L.A.Cosmic, van Dokkum 2001, PASP 113, 1420)
  bool cosmic_enable = true;
  double cosmic_sigclip = 4.5;  ///< detection threshold on the Laplacian significance S'
  double cosmic_sigfrac = 0.3;  ///< neighbours of detections are added above sigfrac*sigclip
  /// Minimum contrast between the Laplacian and the fine-structure image: rejects sharp but
  /// resolved features (emission lines, star traces). A second route, sharpness along both
  /// axes in excess of the neighbouring rows/columns, finds hits on top of lines and traces.
  double cosmic_objlim = 3.0;
  int cosmic_niter = 4;          ///< detection passes; each sees the previous hits cleaned
};

}  // namespace kspecdr::detector
