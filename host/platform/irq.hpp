// Interrupt request lines.  A device owns an IrqLine and drives its level; the
// line forwards to an IrqSink (on a PC the router that feeds the 8259 pair and
// the I/O APIC) under the sink's own numbering (ISA IRQ / GSI).
#pragma once

namespace modevisor::host {

class IrqSink {
 public:
  virtual ~IrqSink() = default;
  virtual void set_irq(unsigned line, bool level) = 0;
};

class IrqLine {
 public:
  IrqLine() = default;
  IrqLine(IrqSink& sink, unsigned line) : sink_(&sink), line_(line) {}

  void set(bool level) {
    if (sink_) sink_->set_irq(line_, level);
    level_ = level;
  }
  void raise() { set(true); }
  void lower() { set(false); }
  // An edge: rising then falling (PIT output, edge-triggered events).
  void pulse() {
    set(true);
    set(false);
  }
  bool level() const { return level_; }
  // State restore: the sink's state already reflects the level; don't signal.
  void restore_level(bool level) { level_ = level; }
  unsigned number() const { return line_; }
  bool connected() const { return sink_ != nullptr; }

 private:
  IrqSink* sink_ = nullptr;
  unsigned line_ = 0;
  bool level_ = false;
};

}  // namespace modevisor::host
