// Guest RAM as a monitor sees it.
#pragma once

#include <cstdint>

namespace modevisor::api {

// Guest RAM is one contiguous range from guest-physical 0, mapped once in the
// monitor process and backed by a shareable file descriptor (a memfd), so a
// translator can map its pages into shadow address spaces and a driver can
// register it as a memory slot.  Everything outside it is MMIO.
class GuestMemory {
 public:
  virtual ~GuestMemory() = default;
  virtual std::uint8_t* host_base() = 0;
  virtual std::uint64_t size() const = 0;
  virtual int fd() const = 0;
  // A write that did not go through the guest's own accesses (device DMA,
  // loader) dirtied these bytes; migration must send them again.  Call it
  // after the write: a collection between the write and the mark then
  // reports the pages in the next round, where marking first could let the
  // collector copy a page before the write lands.  Any thread.
  virtual void mark_dirty(std::uint64_t gpa, std::uint64_t length) = 0;
};

}  // namespace modevisor::api
