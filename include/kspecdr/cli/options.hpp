#pragma once
// Shared command-line handling: every command takes its options from the
// command line and from an INI file given with --config (the command line
// wins), prints --help, and can write the resolved configuration next to its
// outputs. Only cli/ parses options; stages receive plain config structs.
#include <boost/program_options.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace kspecdr::cli {

namespace po = boost::program_options;

struct ParsedOptions {
  po::variables_map vm;
  bool help = false;  ///< --help was given (usage printed on rank 0)
};

/// Parses argv (after the command name). `desc` holds the command's options; --help,
/// --config and --log-level are added here. Positional arguments map onto `positional`.
/// Throws ConfigError (exit code 2) for unknown options or a bad config file.
ParsedOptions parse_options(const std::string& command, const std::string& usage, int argc, char** argv,
                            po::options_description desc, const po::positional_options_description& positional = {});

/// The resolved options as INI text ("key = value" per line, sorted, with a header comment).
std::string resolved_config_ini(const std::string& command, const po::variables_map& vm);

/// A comma-separated list of numbers (blank items skipped); ConfigError naming `command` and `option`
/// for anything else.
std::vector<double> parse_number_list(const std::string& text, const std::string& command, const std::string& option);

/// Registry of commands for the dispatcher in main.cpp.
struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};
const std::vector<Command>& commands();

int run_simulate(int argc, char** argv);
int run_log(int argc, char** argv);
int run_reduce(int argc, char** argv);
int run_extract(int, char**);
int run_templates(int argc, char** argv);
int run_fluxcal(int argc, char** argv);

}  // namespace kspecdr::cli
