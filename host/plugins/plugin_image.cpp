#include "plugins/plugin_image.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace modevisor::host {

namespace {

std::runtime_error failure(const std::filesystem::path& file, const std::string& what, int err) {
  return std::runtime_error("cannot copy plugin " + file.string() + ": " + what + ": " + std::strerror(err));
}

}  // namespace

std::shared_ptr<const PluginImage> PluginImage::copy_of(const std::filesystem::path& file) {
  const int in = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) throw failure(file, "open", errno);
  struct stat st {};
  if (::fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
    const int err = errno ? errno : EINVAL;
    ::close(in);
    throw failure(file, "not a regular file", err);
  }
  if (static_cast<std::uintmax_t>(st.st_size) > kMaxBytes) {
    ::close(in);
    throw std::runtime_error("cannot copy plugin " + file.string() + ": larger than " +
                             std::to_string(kMaxBytes >> 20) + " MiB");
  }
  const int out = ::memfd_create(("modevisor-plugin:" + file.filename().string()).c_str(),
                                 MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (out < 0) {
    const int err = errno;
    ::close(in);
    throw failure(file, "memfd_create", err);
  }
  char buffer[1 << 16];
  std::uintmax_t total = 0;
  for (;;) {
    const ssize_t n = ::read(in, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(in), ::close(out);
      throw failure(file, "read", err);
    }
    if (n == 0) break;
    total += static_cast<std::uintmax_t>(n);
    if (total > kMaxBytes) {  // grew while being read
      ::close(in), ::close(out);
      throw std::runtime_error("cannot copy plugin " + file.string() + ": it grows while being read");
    }
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = ::write(out, buffer + done, static_cast<std::size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        const int err = errno;
        ::close(in), ::close(out);
        throw failure(file, "write to memory", err);
      }
      done += w;
    }
  }
  ::close(in);
  if (::fcntl(out, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    const int err = errno;
    ::close(out);
    throw failure(file, "sealing the copy", err);
  }
  return std::shared_ptr<const PluginImage>(new PluginImage(out, file));
}

std::shared_ptr<const PluginImage> PluginImage::adopt(int fd, std::filesystem::path original) {
  // Only a sealed image is safe to run: the sender cannot change it afterwards.
  const int seals = ::fcntl(fd, F_GET_SEALS);
  const int needed = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
  if (seals < 0 || (seals & needed) != needed) {
    ::close(fd);
    throw std::runtime_error("plugin image for " + original.string() + " is not a sealed memory file");
  }
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  return std::shared_ptr<const PluginImage>(new PluginImage(fd, std::move(original)));
}

PluginImage::~PluginImage() { ::close(fd_); }

std::filesystem::path PluginImage::load_path() const { return "/proc/self/fd/" + std::to_string(fd_); }

}  // namespace modevisor::host
