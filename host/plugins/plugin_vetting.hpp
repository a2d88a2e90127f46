// Vetting untrusted plugin code in a throwaway child process.  Loading a
// library runs its static initializers; describing, creating a monitor and
// probing run more of its code.  Any of it may throw past our catch blocks
// (std::terminate), crash, hang or call exit().  The registry therefore does
// each of those first in a forked child that reports over a pipe; the host
// maps the library itself only after the child said it is well behaved, and
// runs probe() only in a child.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace modevisor::host {

// How long a child may take before it is killed and the plugin refused.
inline constexpr std::chrono::milliseconds kPluginVettingTimeout{10000};

// Runs `work` in a forked child and returns the text it produced, or, when
// the child did not report (it crashed, was killed, exited on its own or
// timed out), why not, as a sentence about `activity` ("loading",
// "probing the host").  `work` returns the report; an exception it throws
// is not caught for it (the child then dies, which is reported).
struct ChildFailure {
  std::string reason;
};
std::variant<std::string, ChildFailure> run_in_child(const std::function<std::string()>& work,
                                                     const std::string& activity,
                                                     std::chrono::milliseconds timeout = kPluginVettingTimeout);

// The streaming form: `work` sends its output piece by piece through `emit`
// (each piece reaches the parent at once, framed with its length), so every
// whole piece a child sent before it died is kept.  `failure` is empty when
// the child finished normally.
struct ChildTranscript {
  std::vector<std::string> pieces;
  std::string failure;
};
using ChildEmit = std::function<void(const std::string&)>;
ChildTranscript run_in_child_streaming(const std::function<void(const ChildEmit&)>& work,
                                       const std::string& activity,
                                       std::chrono::milliseconds timeout = kPluginVettingTimeout);

}  // namespace modevisor::host
