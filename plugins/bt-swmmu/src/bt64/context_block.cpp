#include "bt64/context_block.hpp"

#include <sys/mman.h>

#include <cstring>
#include <stdexcept>
#include <string>

namespace modevisor::bt::bt64 {

namespace {
constexpr std::size_t kPage = 4096;
constexpr std::size_t kTableBytes = kSlotEntries * sizeof(std::uint64_t);
constexpr std::size_t kEntriesPerPage = kPage / sizeof(std::uint64_t);
constexpr std::size_t kTablePages = kTableBytes / kPage;
}  // namespace

ContextBlock::ContextBlock() {
  size_ = static_cast<std::size_t>(kSlotTableOffset) + kTableBytes;
  void* p = mmap(nullptr, size_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("bt64: cannot reserve the context block and slot table (128 GiB of address space)");
  base_ = static_cast<std::uint8_t*>(p);
  if (mprotect(base_, static_cast<std::size_t>(kSlotTableOffset), PROT_READ | PROT_WRITE) != 0) {
    munmap(base_, size_);
    throw std::runtime_error("bt64: cannot make the context block accessible");
  }
  backed_ = new std::uint64_t[kTablePages / 64]();
}

ContextBlock::~ContextBlock() {
  delete[] backed_;
  munmap(base_, size_);
}

void ContextBlock::back_table_page(std::uint64_t slot) {
  const std::uint64_t page = slot / kEntriesPerPage;
  if (backed_[page / 64] & (1ull << (page % 64))) return;
  auto* at = reinterpret_cast<std::uint64_t*>(base_ + kSlotTableOffset + page * kPage);
  if (mprotect(at, kPage, PROT_READ | PROT_WRITE) != 0)
    throw std::runtime_error("bt64: cannot back a page of the slot table for slot " + std::to_string(slot));
  for (std::size_t i = 0; i < kEntriesPerPage; ++i) at[i] = kGuardBias;
  backed_[page / 64] |= 1ull << (page % 64);
}

void ContextBlock::set_slot(std::uint64_t slot, std::uint64_t bias) {
  if (slot >= kSlotEntries) throw std::out_of_range("bt64: slot beyond the table");
  back_table_page(slot);
  table()[slot] = bias;
}

void ContextBlock::clear_slot(std::uint64_t slot) {
  const std::uint64_t page = slot / kEntriesPerPage;
  if (slot < kSlotEntries && (backed_[page / 64] & (1ull << (page % 64)))) table()[slot] = kGuardBias;
}

std::uint64_t ContextBlock::slot_bias(std::uint64_t slot) const {
  const std::uint64_t page = slot / kEntriesPerPage;
  if (slot >= kSlotEntries || !(backed_[page / 64] & (1ull << (page % 64)))) return kGuardBias;
  return table()[slot];
}

void ContextBlock::clear_all_slots() {
  for (std::size_t w = 0; w < kTablePages / 64; ++w) {
    for (std::uint64_t bits = backed_[w]; bits; bits &= bits - 1) {
      const std::uint64_t page = w * 64 + static_cast<unsigned>(__builtin_ctzll(bits));
      auto* at = reinterpret_cast<std::uint64_t*>(base_ + kSlotTableOffset + page * kPage);
      mprotect(at, kPage, PROT_NONE);
      madvise(at, kPage, MADV_DONTNEED);
    }
    backed_[w] = 0;
  }
}

bool ContextBlock::is_table_miss(std::uintptr_t fault_address, std::uint64_t* slot) const {
  const auto start = reinterpret_cast<std::uintptr_t>(base_) + static_cast<std::uintptr_t>(kSlotTableOffset);
  if (fault_address < start || fault_address - start >= kTableBytes) return false;
  if (slot) *slot = (fault_address - start) / sizeof(std::uint64_t);
  return true;
}

void ContextBlock::set_fast(std::uint64_t rip, const void* host) {
  const std::size_t index = rip & (kFastEntries64 - 1);
  auto* e = reinterpret_cast<FastEntry64*>(base_ + kFastOffset64) + index;
  if (e->neg_rip == 0 && fast_used_.size() < kFastEntries64 / 16) fast_used_.push_back(static_cast<std::uint32_t>(index));
  else if (e->neg_rip == 0) fast_overflow_ = true;
  e->neg_rip = -static_cast<std::int64_t>(rip + 1);
  e->host = reinterpret_cast<std::uint64_t>(host);
}

void ContextBlock::clear_fast() {
  // A CR3 write clears the table: only the entries set since the last clear
  // (a whole 1 MiB memset per guest context switch was a tenth of a boot).
  auto* table = reinterpret_cast<FastEntry64*>(base_ + kFastOffset64);
  if (fast_overflow_) {
    std::memset(table, 0, kFastEntries64 * sizeof(FastEntry64));
  } else {
    for (std::uint32_t index : fast_used_) table[index] = FastEntry64{};
  }
  fast_used_.clear();
  fast_overflow_ = false;
}

void ContextBlock::revoke_poll() { mprotect(base_ + kPollOffset64, kPage, PROT_NONE); }
void ContextBlock::restore_poll() { mprotect(base_ + kPollOffset64, kPage, PROT_READ | PROT_WRITE); }

}  // namespace modevisor::bt::bt64
