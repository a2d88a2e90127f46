// A fault the guest must see (an x86 exception with its error code), as a
// value: checks return it instead of throwing, so the paths that run per
// guest event decide themselves whether to deliver it.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>

namespace modevisor::bt {

struct Fault {
  std::uint8_t vector;
  bool has_error;
  std::uint32_t error;

  static constexpr Fault gp(std::uint32_t error) { return {13, true, error}; }  // #GP
  static constexpr Fault np(std::uint32_t error) { return {11, true, error}; }  // #NP
  static constexpr Fault ss(std::uint32_t error) { return {12, true, error}; }  // #SS
  static constexpr Fault ts(std::uint32_t error) { return {10, true, error}; }  // #TS
  static constexpr Fault ud() { return {6, false, 0}; }
  friend constexpr bool operator==(const Fault&, const Fault&) = default;
};

// The monitor's deep emulation paths still unwind with a thrown Fault; the
// name says what it is there.
using GuestException = Fault;

// A check that passes or names the fault.
using Check = std::optional<Fault>;

// A value, or the fault that prevented it.
template <class T>
class Outcome {
 public:
  Outcome(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Outcome(Fault fault) : fault_(fault) {}         // NOLINT
  bool ok() const { return !fault_; }
  const T& value() const { return value_; }
  const Fault& fault() const { return *fault_; }

 private:
  T value_{};
  std::optional<Fault> fault_;
};

}  // namespace modevisor::bt
