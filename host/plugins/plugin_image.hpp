// A private, sealed copy of a plugin file in memory (a memfd).  Plugins are
// loaded from their image, never from the file itself: a file overwritten in
// place (cp, a compiler's output) while a VM runs its code would otherwise
// change the pages that VM executes.  The image is immutable (sealed), so it
// can also be handed to another process (a VM's monitor process) with
// SCM_RIGHTS and loaded there: the code that runs is the code the host vetted.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>

namespace modevisor::host {

class PluginImage {
 public:
  // The largest plugin file copied: a plugin is a few MiB; this bounds what a
  // stray file in a plugin directory can make the host read.
  static constexpr std::uintmax_t kMaxBytes = 256ull << 20;

  // Copies `file`; throws std::runtime_error naming the file and the reason.
  static std::shared_ptr<const PluginImage> copy_of(const std::filesystem::path& file);
  // Takes ownership of a sealed memfd received from another process.
  static std::shared_ptr<const PluginImage> adopt(int fd, std::filesystem::path original);

  ~PluginImage();
  PluginImage(const PluginImage&) = delete;
  PluginImage& operator=(const PluginImage&) = delete;

  int fd() const { return fd_; }
  // The name the dynamic linker loads it by (/proc/self/fd/N).  Unique while
  // this image lives, so two versions of one file are two libraries.
  std::filesystem::path load_path() const;
  const std::filesystem::path& original() const { return original_; }

 private:
  PluginImage(int fd, std::filesystem::path original) : fd_(fd), original_(std::move(original)) {}
  int fd_;
  std::filesystem::path original_;
};

}  // namespace modevisor::host
