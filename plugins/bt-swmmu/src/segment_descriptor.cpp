#include "segment_descriptor.hpp"

namespace modevisor::bt {

namespace {
bool is_code(const api::Segment& d) { return d.type & 8; }
std::uint32_t selector_error(std::uint16_t sel) { return sel & 0xfffc; }
}  // namespace

api::Segment decode_segment_descriptor(std::uint64_t d, std::uint16_t sel) {
  api::Segment s;
  s.selector = sel;
  s.base = ((d >> 16) & 0xffffff) | (((d >> 56) & 0xff) << 24);
  const std::uint32_t limit = (d & 0xffff) | (((d >> 48) & 0xf) << 16);
  s.g = (d >> 55) & 1;
  s.limit = s.g ? (limit << 12) | 0xfff : limit;
  s.type = (d >> 40) & 0xf;
  s.s = (d >> 44) & 1;
  s.dpl = (d >> 45) & 3;
  s.present = (d >> 47) & 1;
  s.avl = (d >> 52) & 1;
  s.l = (d >> 53) & 1;
  s.db = (d >> 54) & 1;
  return s;
}

Check check_data_segment_load(const api::Segment& d, std::uint16_t sel, unsigned cpl) {
  const std::uint32_t err = selector_error(sel);
  const unsigned rpl = sel & 3;
  if (!d.s) return Fault::gp(err);
  if (is_code(d) && !(d.type & 2)) return Fault::gp(err);  // execute-only code
  const bool conforming_code = is_code(d) && (d.type & 4);
  if (!conforming_code && (d.dpl < cpl || d.dpl < rpl)) return Fault::gp(err);
  if (!d.present) return Fault::np(err);
  return std::nullopt;
}

Check check_stack_segment_load(const api::Segment& d, std::uint16_t sel, unsigned cpl) {
  const std::uint32_t err = selector_error(sel);
  if (!d.s) return Fault::gp(err);
  if ((sel & 3u) != cpl || d.dpl != cpl || is_code(d) || !(d.type & 2)) return Fault::gp(err);
  if (!d.present) return Fault::ss(err);
  return std::nullopt;
}

Check check_interrupt_stack(const api::Segment& d, std::uint16_t sel, unsigned new_cpl) {
  const std::uint32_t err = selector_error(sel);
  if ((sel & 3u) != new_cpl || d.dpl != new_cpl || !d.s || is_code(d) || !(d.type & 2)) return Fault::ts(err);
  if (!d.present) return Fault::ss(err);
  return std::nullopt;
}

Check check_code_segment(const api::Segment& d, std::uint16_t sel) {
  if (!d.s || !is_code(d)) return Fault::gp(selector_error(sel));
  if (!d.present) return Fault::np(selector_error(sel));
  return std::nullopt;
}

Check check_far_transfer_target(const api::Segment& d, std::uint16_t sel, unsigned cpl) {
  const std::uint32_t err = selector_error(sel);
  if (!is_code(d)) return Fault::gp(err);
  const bool conforming = d.type & 4;
  if (conforming ? d.dpl > cpl : ((sel & 3u) > cpl || d.dpl != cpl)) return Fault::gp(err);
  if (!d.present) return Fault::np(err);
  return std::nullopt;
}

Check check_ldt_descriptor(const api::Segment& d, std::uint16_t sel) {
  if (d.s || d.type != 2) return Fault::gp(selector_error(sel));
  if (!d.present) return Fault::np(selector_error(sel));
  return std::nullopt;
}

Check check_tss_descriptor(const api::Segment& d, std::uint16_t sel) {
  if (d.s || (d.type != 9 && d.type != 1)) return Fault::gp(selector_error(sel));
  if (!d.present) return Fault::np(selector_error(sel));
  return std::nullopt;
}

GateDescriptor decode_gate_descriptor(std::uint64_t gate) {
  GateDescriptor g;
  g.type = (gate >> 40) & 0x1f;
  g.dpl = (gate >> 45) & 3;
  g.present = (gate >> 47) & 1;
  g.selector = static_cast<std::uint16_t>((gate >> 16) & 0xffff);
  g.offset = static_cast<std::uint32_t>((gate & 0xffff) | ((gate >> 48) << 16));
  g.parameter_count = static_cast<unsigned>((gate >> 32) & 0x1f);
  return g;
}

Check check_call_gate(const GateDescriptor& gate, std::uint16_t gate_sel, unsigned cpl) {
  const std::uint32_t err = selector_error(gate_sel);
  if (gate.dpl < cpl || gate.dpl < (gate_sel & 3u)) return Fault::gp(err);
  if (!gate.present) return Fault::np(err);
  return std::nullopt;
}

Check check_call_gate_target(const api::Segment& d, std::uint16_t sel, unsigned cpl, bool call) {
  const std::uint32_t err = selector_error(sel);
  if (!d.s || !is_code(d) || d.dpl > cpl) return Fault::gp(err);
  if (!call && !(d.type & 4) && d.dpl != cpl) return Fault::gp(err);
  if (!d.present) return Fault::np(err);
  return std::nullopt;
}

}  // namespace modevisor::bt
