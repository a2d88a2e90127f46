// expect_plugin DIR NAME MODE
//
// Scans DIR with the plugin registry and succeeds only when it holds exactly
// one plugin, named NAME, of mode MODE, with no problems.  Prints what it saw,
// so a failing ctest log shows why.
#include <cstdio>
#include <string_view>

#include "plugins/registry.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s DIR NAME MODE\n", argv[0]);
    return 2;
  }
  const std::string_view expected_name = argv[2], expected_mode = argv[3];

  modevisor::host::PluginRegistry registry({argv[1]});
  registry.rescan();

  for (const auto& problem : registry.problems())
    std::printf("problem: %s: %s\n", problem.file.c_str(), problem.reason.c_str());
  for (const auto& plugin : registry.plugins()) {
    const auto& d = plugin->descriptor;
    std::printf("plugin: %s %s mode %s log token %s deterministic %s guests%s%s: %s\n  file %s\n", d.name.c_str(),
                d.version.c_str(), plugin->mode.c_str(), d.log_token.c_str(), d.deterministic ? "yes" : "no",
                d.guests.bits32 ? " 32-bit" : "", d.guests.bits64 ? " 64-bit" : "", d.summary.c_str(),
                plugin->file.c_str());
  }

  bool ok = registry.problems().empty() && registry.plugins().size() == 1;
  if (ok) {
    const auto& plugin = registry.plugins().front();
    ok = plugin->descriptor.name == expected_name && plugin->mode == expected_mode;
  }
  if (!ok)
    std::fprintf(stderr, "expected exactly one plugin '%s' of mode %s and no problems\n", argv[2], argv[3]);
  return ok ? 0 : 1;
}
