#include "common/bounded_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/errors.hpp"

namespace modevisor::host {

namespace {

std::string size_text(std::uint64_t bytes) {
  if (bytes >= (1ull << 30) && bytes % (1ull << 30) == 0) return fmt::format("{} GiB", bytes >> 30);
  if (bytes >= (1ull << 20) && bytes % (1ull << 20) == 0) return fmt::format("{} MiB", bytes >> 20);
  if (bytes >= (1ull << 10) && bytes % (1ull << 10) == 0) return fmt::format("{} KiB", bytes >> 10);
  return fmt::format("{} bytes", bytes);
}

class Descriptor {
 public:
  explicit Descriptor(int fd) : fd_(fd) {}
  ~Descriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

template <typename Buffer>
Buffer read_into(const std::filesystem::path& file, std::uint64_t limit, std::string_view what) {
  auto fail = [&](const std::string& why) { return InputError(file, 0, 0, fmt::format("{}: {}", what, why)); };
  const Descriptor fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw fail(fmt::format("cannot read the file ({})", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw fail(fmt::format("cannot stat the file ({})", std::strerror(errno)));
  if (S_ISDIR(st.st_mode)) throw fail("is a directory, not a file");
  const bool regular = S_ISREG(st.st_mode);
  if (regular && static_cast<std::uint64_t>(st.st_size) > limit)
    throw fail(fmt::format("the file is {} bytes; at most {} are accepted", st.st_size, size_text(limit)));

  Buffer out;
  if (regular && st.st_size > 0) out.reserve(static_cast<std::size_t>(st.st_size));
  char chunk[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd.get(), chunk, sizeof chunk);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      throw fail(fmt::format("cannot read the file ({})", std::strerror(errno)));
    }
    // Files whose size lies (/proc, devices, pipes, a file growing meanwhile)
    // are held to the same limit while they are read.
    if (out.size() + static_cast<std::size_t>(n) > limit)
      throw fail(fmt::format("more than {} to read; at most that is accepted{}", size_text(limit),
                             regular ? "" : " (a device or pipe, not a regular file)"));
    out.insert(out.end(), chunk, chunk + n);
  }
  return out;
}

}  // namespace

std::vector<std::uint8_t> read_bounded_file(const std::filesystem::path& file, std::uint64_t limit,
                                            std::string_view what) {
  return read_into<std::vector<std::uint8_t>>(file, limit, what);
}

std::string read_bounded_text(const std::filesystem::path& file, std::uint64_t limit, std::string_view what) {
  return read_into<std::string>(file, limit, what);
}

std::vector<std::uint8_t> read_guest_image(const std::filesystem::path& file, std::uint64_t ram_bytes,
                                           std::string_view what) {
  return read_bounded_file(file, std::min(ram_bytes, kMaxGuestImageBytes), what);
}

}  // namespace modevisor::host
