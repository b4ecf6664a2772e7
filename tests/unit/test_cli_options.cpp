// The command line and --config files: config-used.ini, written by every run, gives the same options back
// when passed to --config (a repeatable option keeps every value), and the log level is taken from wherever
// the options came from, a misspelt one being a configuration error rather than a silent log.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <string>
#include <vector>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/cli/stage_options.hpp"
#include "kspecdr/core/error.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {

cli::ParsedOptions parse(std::vector<std::string> args) {
  args.insert(args.begin(), "extract");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return cli::parse_options("extract", "test", static_cast<int>(argv.size()), argv.data(), cli::stage_options(),
                            cli::po::positional_options_description{});
}

}  // namespace

TEST(CliOptions, ConfigUsedIniGivesEveryValueOfARepeatedOptionBack) {
  const auto level_before = spdlog::get_level();
  const auto first = parse({"--trace.reference", "101.5,40", "--trace.reference", "230,41.25", "--sky.order", "2",
                            "--log-level", "debug"});
  EXPECT_EQ(spdlog::get_level(), spdlog::level::debug);
  const std::string ini = cli::resolved_config_ini("extract", first.vm);
  kspecdr::testing::TempDir dir("kspecdr-cli");
  const fs::path file = dir.path() / "config-used.ini";
  std::ofstream(file) << ini;
  spdlog::set_level(spdlog::level::info);
  const auto again = parse({"--config", file.string()});
  EXPECT_EQ(spdlog::get_level(), spdlog::level::debug) << "the level should come from the config file too";
  ASSERT_TRUE(again.vm.count("trace.reference")) << ini;
  EXPECT_EQ(again.vm["trace.reference"].as<std::vector<std::string>>(),
            (std::vector<std::string>{"101.5,40", "230,41.25"}))
      << ini;
  ExStageConfig a, b;
  cli::read_stage_options(first.vm, "extract", a);
  cli::read_stage_options(again.vm, "extract", b);
  ASSERT_EQ(b.trace.references.size(), 2u);
  EXPECT_EQ(b.trace.references, a.trace.references);
  EXPECT_EQ(b.trace.references[1].first, 230.0);
  EXPECT_EQ(b.trace.references[1].second, 41.25);
  EXPECT_EQ(b.sky.poly_order, 2);
  // The same configuration written again: the same text (what the outputs' CFGHASH is made of).
  EXPECT_EQ(cli::resolved_config_ini("extract", again.vm), ini);
  spdlog::set_level(level_before);
}

TEST(CliOptions, AMisspeltLogLevelIsAConfigurationError) {
  const auto level_before = spdlog::get_level();
  EXPECT_THROW(parse({"--log-level", "loud"}), ConfigError);
  EXPECT_EQ(spdlog::get_level(), level_before) << "a refused level must not change (or silence) the log";
  parse({"--log-level=warning"});
  EXPECT_EQ(spdlog::get_level(), spdlog::level::warn);
  spdlog::set_level(level_before);
}
