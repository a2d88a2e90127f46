// A main for the fuzz targets in the ordinary (gcc) build: it runs every file
// of the folders and files it is given through LLVMFuzzerTestOneInput once.
// ctest `fuzz_replay_<target>` replays the seed corpora and the regression
// reproducers that way, so a target that no longer compiles against the code
// it fuzzes, or an input that crashed once and crashes again, fails the
// ordinary suite and not only the clang fuzz build.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace fs = std::filesystem;

namespace {

constexpr std::uintmax_t kMaxInput = 16u << 20;  // libFuzzer's inputs are small; a seed above this is a mistake

bool replay(const fs::path& file) {
  std::error_code ec;
  const auto size = fs::file_size(file, ec);
  if (ec || size > kMaxInput) {
    std::fprintf(stderr, "replay: %s: %s\n", file.c_str(), ec ? ec.message().c_str() : "larger than 16 MiB");
    return false;
  }
  std::ifstream in(file, std::ios::binary);
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t replayed = 0;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const fs::path arg(argv[i]);
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      for (const auto& entry : fs::recursive_directory_iterator(arg)) {
        if (!entry.is_regular_file()) continue;
        ok = replay(entry.path()) && ok;
        ++replayed;
      }
    } else if (fs::is_regular_file(arg, ec)) {
      ok = replay(arg) && ok;
      ++replayed;
    }  // a folder that does not exist holds no seeds
  }
  std::printf("replayed %zu inputs\n", replayed);
  return ok && replayed > 0 ? 0 : 1;
}
