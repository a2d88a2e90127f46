#include "platform/machine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>

namespace modevisor::host {

namespace {
std::uint64_t all_ones(unsigned size) { return size >= 8 ? ~0ull : (1ull << (size * 8)) - 1; }
}  // namespace

Machine::Machine(std::shared_ptr<TimeSource> clock)
    : clock_(clock ? std::move(clock) : std::make_shared<HostClock>()),
      port_slot_(new std::uint16_t[0x10000]),
      port_counts_(new std::atomic<std::uint64_t>[0x10000]) {
  std::fill_n(port_slot_.get(), 0x10000, kUnclaimed);
  for (unsigned p = 0; p < 0x10000; ++p) port_counts_[p].store(0, std::memory_order_relaxed);
}

Machine::~Machine() {
  for (auto& table : vcpu_port_counts_) std::free(table.load());
}

void Machine::count_port(unsigned vcpu, std::uint16_t port) {
  if (vcpu >= kCountedVcpus) {
    port_counts_[port].fetch_add(1, std::memory_order_relaxed);
    return;
  }
  std::uint64_t* table = vcpu_port_counts_[vcpu].load(std::memory_order_acquire);
  if (!table) {
    auto* fresh = static_cast<std::uint64_t*>(std::calloc(0x10000, sizeof(std::uint64_t)));
    if (!fresh) throw std::bad_alloc();
    if (vcpu_port_counts_[vcpu].compare_exchange_strong(table, fresh, std::memory_order_acq_rel))
      table = fresh;
    else
      std::free(fresh);  // another thread with this index was first
  }
  std::atomic_ref<std::uint64_t> count(table[port]);
  count.store(count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

void Machine::attach_ports(std::uint16_t first, std::uint16_t count, PortDevice& device) {
  const unsigned end = unsigned{first} + count;
  for (const PortRange& range : port_ranges_)
    if (first < range.first + range.count && range.first < end)
      throw std::logic_error(fmt::format("{} at ports {:#x}-{:#x} overlaps {}", device.name(), first, end - 1,
                                         range.device->name()));
  if (port_ranges_.size() >= kUnclaimed) throw std::logic_error("too many port ranges");
  TimerDevice* timer = nullptr;
  for (TimerDevice* t : timers_)
    if (dynamic_cast<TimerDevice*>(&device) == t) timer = t;
  port_ranges_.push_back({first, count, &device, timer, device.self_synchronised()});
  std::fill_n(port_slot_.get() + first, count, static_cast<std::uint16_t>(port_ranges_.size() - 1));
}

void Machine::attach_mmio(std::uint64_t base, std::uint64_t size, MmioDevice& device) {
  for (const auto& [start, range] : mmio_)
    if (base < start + range.size && start < base + size)
      throw std::logic_error(fmt::format("{} at {:#x} overlaps {}", device.name(), base, range.device->name()));
  mmio_.try_emplace(base, size, device);
}

// A device may attach its ports before or after its timer.
void Machine::attach_timer(TimerDevice& device) {
  timers_.push_back(&device);
  for (PortRange& range : port_ranges_)
    if (dynamic_cast<TimerDevice*>(range.device) == &device) range.timer = &device;
  next_deadline_.store(0, std::memory_order_release);
}

Machine::MmioRange* Machine::mmio_owner(std::uint64_t gpa, std::uint64_t& offset) {
  auto it = mmio_.upper_bound(gpa);
  if (it == mmio_.begin()) return nullptr;
  --it;
  if (gpa - it->first >= it->second.size) return nullptr;
  offset = gpa - it->first;
  return &it->second;
}

std::map<std::uint16_t, std::uint64_t> Machine::port_accesses() const {
  std::map<std::uint16_t, std::uint64_t> out;
  std::vector<std::uint64_t> sum(0x10000);
  for (unsigned p = 0; p < 0x10000; ++p) sum[p] = port_counts_[p].load(std::memory_order_relaxed);
  for (const auto& table : vcpu_port_counts_)
    if (std::uint64_t* t = table.load(std::memory_order_acquire))
      for (unsigned p = 0; p < 0x10000; ++p) sum[p] += std::atomic_ref<std::uint64_t>(t[p]).load(std::memory_order_relaxed);
  for (unsigned p = 0; p < 0x10000; ++p)
    if (sum[p]) out.emplace(p, sum[p]);
  return out;
}

std::map<std::string, std::uint64_t, std::less<>> Machine::mmio_accesses() const {
  std::map<std::string, std::uint64_t, std::less<>> out;
  for (const auto& [base, range] : mmio_)
    if (const std::uint64_t n = range.total())
      out[std::string(range.device->name())] += n;
  if (const std::uint64_t n = unclaimed_mmio_.load(std::memory_order_relaxed)) out["unclaimed"] += n;
  return out;
}

class Machine::TimedAccess {
 public:
  TimedAccess(Machine& machine, TimerDevice* timer, bool write) : machine_(machine), timer_(timer), write_(write) {
    if (!timer_) return;
    const std::uint64_t now = machine_.now_ns();
    if (now >= machine_.next_deadline_.load(std::memory_order_acquire))
      machine_.poll_timers_locked(now);
    else
      timer_->poll_timers(now);  // nothing due: only this device's own state up to now
  }
  // A read leaves the deadline where it was, but a write may move it either
  // way: the next question polls every timer again.
  ~TimedAccess() {
    if (!timer_) return;
    if (write_)
      machine_.timers_changed();
    else
      machine_.lower_deadline(timer_->poll_timers(machine_.now_ns()));
  }
  TimedAccess(const TimedAccess&) = delete;
  TimedAccess& operator=(const TimedAccess&) = delete;

 private:
  Machine& machine_;
  TimerDevice* timer_;
  bool write_;
};

std::uint32_t Machine::io_in(unsigned vcpu, std::uint16_t port, unsigned size) {
  count_port(vcpu, port);
  const PortRange* owner = port_owner(port);
  if (!owner) return static_cast<std::uint32_t>(all_ones(size));
  if (owner->self_synchronised)
    return static_cast<std::uint32_t>(owner->device->port_read(port, size) & all_ones(size));
  auto guard = lock();
  TimedAccess timed(*this, owner->timer, false);
  return static_cast<std::uint32_t>(owner->device->port_read(port, size) & all_ones(size));
}

void Machine::io_out(unsigned vcpu, std::uint16_t port, unsigned size, std::uint32_t value) {
  count_port(vcpu, port);
  const PortRange* owner = port_owner(port);
  if (!owner) return;
  if (owner->self_synchronised) {
    owner->device->port_write(port, size, value);
    return;
  }
  auto guard = lock();
  {
    TimedAccess timed(*this, owner->timer, true);
    owner->device->port_write(port, size, value);
  }
  // A write may have unmasked an interrupt (the 8259's IMR, an EOI).
  note_change();
  notify_waiters();
}

std::uint64_t Machine::mmio_read(unsigned vcpu, std::uint64_t gpa, unsigned size) {
  std::uint64_t offset = 0;
  MmioRange* owner = mmio_owner(gpa, offset);
  if (!owner) {
    unclaimed_mmio_.fetch_add(1, std::memory_order_relaxed);
    return all_ones(size);
  }
  owner->count(vcpu);
  auto guard = lock();
  return owner->device->mmio_read(vcpu, offset, size) & all_ones(size);
}

void Machine::mmio_write(unsigned vcpu, std::uint64_t gpa, unsigned size, std::uint64_t value) {
  std::uint64_t offset = 0;
  MmioRange* owner = mmio_owner(gpa, offset);
  if (!owner) {
    unclaimed_mmio_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  owner->count(vcpu);
  auto guard = lock();
  owner->device->mmio_write(vcpu, offset, size, value);
  if (!owner->device->announces_changes()) {
    note_change();
    notify_waiters();
  }
}

std::uint64_t Machine::poll_timers_locked(std::uint64_t now) {
  std::uint64_t next = UINT64_MAX;
  for (TimerDevice* timer : timers_) next = std::min(next, timer->poll_timers(now));
  // A deadline that moved earlier was reported when it was armed; a later one
  // only spares polls.
  next_deadline_.store(next, std::memory_order_release);
  return next;
}

// Polls only when the earliest deadline has come.
std::uint64_t Machine::poll_timers_locked() {
  const std::uint64_t now = now_ns();
  const std::uint64_t next = next_deadline_.load(std::memory_order_acquire);
  return now >= next ? poll_timers_locked(now) : next;
}

std::uint64_t Machine::poll_timers() {
  auto guard = lock();
  return poll_timers_locked(now_ns());
}

void Machine::lower_deadline(std::uint64_t deadline_ns) {
  if (deadline_ns >= next_deadline_.load(std::memory_order_acquire)) return;
  next_deadline_.store(deadline_ns, std::memory_order_release);
  // Monitors and waiters that armed a host timer for the old deadline look again.
  note_change();
  notify_waiters();
}

void Machine::timers_changed() {
  auto guard = lock();
  next_deadline_.store(0, std::memory_order_release);
  note_change();
  notify_waiters();
}

bool Machine::interrupt_pending(unsigned vcpu) {
  auto guard = lock();
  poll_timers_locked();
  return controller_ && controller_->interrupt_pending(vcpu);
}

std::uint8_t Machine::acknowledge_interrupt(unsigned vcpu) {
  auto guard = lock();
  poll_timers_locked();
  return controller_ ? controller_->acknowledge_interrupt(vcpu) : 0xff;
}

std::uint64_t Machine::next_timer_deadline_ns() {
  // Nothing due yet: the cached deadline, without the lock.
  const std::uint64_t cached = next_deadline_.load(std::memory_order_acquire);
  if (cached != 0 && now_ns() < cached) return cached;
  auto guard = lock();
  return poll_timers_locked();
}

api::CpuEvents Machine::cpu_events(unsigned vcpu) {
  auto guard = lock();
  return controller_ ? controller_->cpu_events(vcpu) : api::CpuEvents{};
}

bool Machine::acknowledge_nmi(unsigned vcpu) {
  auto guard = lock();
  return controller_ && controller_->acknowledge_nmi(vcpu);
}

std::uint64_t Machine::apic_base(unsigned vcpu) {
  auto guard = lock();
  return controller_ ? controller_->apic_base(vcpu) : 0xfee00000 | (vcpu == 0 ? 0x900 : 0x800);
}

void Machine::set_apic_base(unsigned vcpu, std::uint64_t value) {
  auto guard = lock();
  if (controller_) controller_->set_apic_base(vcpu, value);
  note_change();
  wake_.notify_all();  // a hardware-disabled APIC hands the CPU to the 8259
}

StartupEvents Machine::take_startup(unsigned vcpu) {
  auto guard = lock();
  return controller_ ? controller_->take_startup(vcpu) : StartupEvents{};
}

// The time source's time at which guest time reaches `guest_ns` (UINT64_MAX: never).
std::uint64_t Machine::clock_deadline(std::uint64_t guest_ns) const {
  if (guest_ns == UINT64_MAX) return UINT64_MAX;
  const std::int64_t offset = time_offset_.load();
  return offset > 0 && guest_ns < static_cast<std::uint64_t>(offset) ? 0 : guest_ns - offset;
}

// Counts a vCPU blocked in a wait, so that device writes notify wake_ only
// when someone waits (the lock is held whenever it changes or is read).
struct Machine::Waiting {
  explicit Waiting(unsigned& waiters) : waiters_(waiters) { ++waiters_; }
  ~Waiting() { --waiters_; }
  Waiting(const Waiting&) = delete;
  Waiting& operator=(const Waiting&) = delete;
  unsigned& waiters_;
};

void Machine::wait_for_startup(unsigned vcpu) {
  auto guard = lock();
  const Waiting waiting(waiters_);
  waiting_startup_.insert(vcpu);
  for (;;) {
    if (stop_requested() || woken_.erase(vcpu)) break;
    if (controller_) {
      const api::CpuEvents e = controller_->cpu_events(vcpu);
      if (e.init || e.startup) break;
    }
    stop_if_halted_for_good();
    if (stop_requested()) break;
    clock_->wait_until(guard, wake_, UINT64_MAX);
  }
  waiting_startup_.erase(vcpu);
}

void Machine::wait_for_cpu_event(unsigned vcpu) {
  auto guard = lock();
  const Waiting waiting(waiters_);
  halted_interrupts_off_.insert(vcpu);
  for (;;) {
    // Device timers cannot wake this vCPU, but they keep running for the others.
    const std::uint64_t next = poll_timers_locked();
    if (stop_requested() || woken_.erase(vcpu) || (controller_ && controller_->cpu_events(vcpu).any())) break;
    stop_if_halted_for_good();
    if (stop_requested()) break;
    clock_->wait_until(guard, wake_, clock_deadline(next));
  }
  halted_interrupts_off_.erase(vcpu);
}

// A waiting vCPU that has something to take (a kick, an NMI, INIT or STARTUP)
// is not stuck.
bool Machine::can_wake(unsigned vcpu) {
  return woken_.count(vcpu) || (controller_ && controller_->cpu_events(vcpu).any());
}

// Every vCPU is halted with interrupts off or waits for a STARTUP, and none
// has an event to take: only another vCPU or a device could send one, and
// none will (the I/O APIC's NMI/INIT pins aside, which nothing here drives).
void Machine::stop_if_halted_for_good() {
  if (halted_interrupts_off_.empty() || halted_interrupts_off_.size() + waiting_startup_.size() < vcpu_count_) return;
  for (unsigned v : halted_interrupts_off_)
    if (can_wake(v)) return;
  for (unsigned v : waiting_startup_)
    if (can_wake(v)) return;
  request_stop(vcpu_count_ == 1 ? "halted: the vCPU halted with interrupts disabled, so nothing can wake it"
                                : "halted: every vCPU is halted with interrupts disabled or waits for a STARTUP, "
                                  "so nothing can wake the VM");
}

void Machine::wait_for_interrupt(unsigned vcpu) {
  auto guard = lock();
  const Waiting waiting(waiters_);
  for (;;) {
    const std::uint64_t next = poll_timers_locked();
    if (stop_requested() || woken_.erase(vcpu) ||
        (controller_ && (controller_->interrupt_pending(vcpu) || controller_->cpu_events(vcpu).any())))
      return;
    clock_->wait_until(guard, wake_, clock_deadline(next));
  }
}

void Machine::wake(unsigned vcpu) {
  auto guard = lock();
  woken_.insert(vcpu);
  wake_.notify_all();
}

void Machine::interrupt_raised(unsigned vcpu) {
  note_change();
  notify_waiters();
  if (notifier_) notifier_(vcpu);
}

std::uint64_t Machine::now_ns() const {
  if (paused_.load(std::memory_order_acquire)) return frozen_time_.load(std::memory_order_acquire);
  return static_cast<std::uint64_t>(static_cast<std::int64_t>(clock_->now_ns()) + time_offset_.load());
}

void Machine::set_guest_time(std::uint64_t now_ns) {
  auto guard = lock();
  frozen_time_.store(now_ns, std::memory_order_release);
  time_offset_.store(static_cast<std::int64_t>(now_ns) - static_cast<std::int64_t>(clock_->now_ns()));
}

void Machine::set_paused(bool paused) {
  auto guard = lock();
  if (paused == paused_.load()) return;
  if (paused) {
    frozen_time_.store(now_ns(), std::memory_order_release);
    paused_.store(true, std::memory_order_release);
  } else {
    const std::uint64_t frozen = frozen_time_.load();
    time_offset_.store(static_cast<std::int64_t>(frozen) - static_cast<std::int64_t>(clock_->now_ns()));
    paused_.store(false, std::memory_order_release);
  }
  wake_.notify_all();
}

bool Machine::request_stop(std::string reason, std::optional<int> exit_status) {
  auto guard = lock();
  if (stop_.load()) return false;  // the first reason wins
  stop_reason_ = std::move(reason);
  exit_status_ = exit_status;
  stop_.store(true, std::memory_order_release);
  wake_.notify_all();
  return true;
}

std::string Machine::stop_reason() const {
  auto guard = lock();
  return stop_reason_;
}

std::optional<int> Machine::exit_status() const {
  auto guard = lock();
  return exit_status_;
}

}  // namespace modevisor::host
