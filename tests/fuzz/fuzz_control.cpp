// The control protocol as modevisord and a monitor process read it: a byte
// stream split into lines (LineBuffer, fed in pieces as a socket delivers
// them), each line parsed as JSON and checked as a request (parse_request),
// console input's base64 decoded.  Nothing a peer sends may end the reader:
// no exception escapes, no sanitizer report.
//
// MODEVISOR_FUZZ_WRITE_SEEDS=DIR: writes seed inputs to DIR and exits.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "control/protocol.hpp"
#include "fuzz_support.hpp"

using namespace modevisor;
using control::json;

namespace {

void write_seeds(const std::string& dir) {
  const std::string lines[] = {
      control::encode_line(control::request(1, "hello")),
      control::encode_line(control::request(2, "vm.start", {{"file", "/tmp/vm.yaml"}})) +
          control::encode_line(control::request(3, "vm.status", {{"name", "x"}})),
      control::encode_line(control::request(0, "console-input", {{"data", control::base64_encode(std::string("ls\r"))}})),
      control::encode_line(control::request(4, "vm.migrate", {{"name", "x"}, {"to", "host-b"}, {"downtime_ms", 300}})),
      "{\"id\":\"a\",\"op\":5}\n{\"op\":\"x\",\"args\":[1]}\n[1,2]\n\n{\"id\":{},\"op\":\"y\"}\n",
  };
  int n = 0;
  for (const auto& text : lines) {
    // First byte: the size of the pieces the stream arrives in.
    std::ofstream(dir + "/seed-" + std::to_string(n++), std::ios::binary) << static_cast<char>(7) << text;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) { return modevisor::fuzz::write_seeds_when_asked(write_seeds); }

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t piece = 1 + data[0] % 64;
  const std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);
  control::LineBuffer lines;
  for (std::size_t at = 0; at < stream.size(); at += piece) {
    lines.append(stream.substr(at, piece));
    while (auto line = lines.next_line()) {
      if (line->empty()) continue;
      const json message = json::parse(*line, nullptr, /*allow_exceptions=*/false);
      if (message.is_discarded()) continue;
      std::string why;
      const auto request = control::parse_request(message, &why);
      if (!request) {
        if (why.empty()) std::abort();  // a refusal says why
        continue;
      }
      // What the handlers read of every request: strings given as strings.
      if (auto it = request->args.find("data"); it != request->args.end() && it->is_string())
        (void)control::base64_decode(it->get_ref<const std::string&>());
      (void)control::encode_line(control::reply_error(request->id, control::error_code::kProtocol, request->op));
    }
    if (lines.overflowed()) break;
  }
  return 0;
}
