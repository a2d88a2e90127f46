// Real-address mode and virtual-8086 mode (SDM vol. 3 chapter 20): segment
// registers hold paragraphs (base = selector << 4), far transfers push and
// pop plain CS:IP frames, real-mode interrupts go through the IVT with word
// frames; and virtual-8086 mode's ways out to and back from the protected-
// mode kernel (interrupts and exceptions to ring 0, IRET with EFLAGS.VM).
// The IOPL-sensitive instructions' #GP is checked where they are emulated.
#include "event_frame.hpp"
#include "vcpu.hpp"

namespace modevisor::bt {

using namespace eflags_bits;

namespace {

constexpr std::uint32_t kAC = 0x40000, kID = 0x200000, kVIF = 0x80000, kVIP = 0x100000;
constexpr std::uint32_t kArithAndDf = 0xcd5;  // CF PF AF ZF SF OF DF: always restored by IRET

// A virtual-8086 segment cache: a 64 KiB read/write data segment at DPL 3
// (CS too), what VMX also requires of virtual-8086 guest state.
api::Segment v86_segment(std::uint16_t sel) {
  api::Segment s;
  s.selector = sel;
  s.base = std::uint32_t{sel} << 4;
  s.limit = 0xffff;
  s.type = 3;
  s.s = true;
  s.dpl = 3;
  s.present = true;
  return s;
}

}  // namespace

void Vcpu::load_segment_real(int sreg, std::uint16_t sel) {
  api::Segment& s = seg(sreg);
  if (v86()) {
    s = v86_segment(sel);
  } else {
    // Real mode changes the selector and the base only; the hidden limit and
    // attributes stay what protected mode left (QEMU does the same).  A cache
    // that holds no segment (nulled in protected mode) becomes a 64 KiB one.
    s.selector = sel;
    s.base = std::uint32_t{sel} << 4;
    if (s.unusable || !s.present) {
      s.unusable = false;
      s.present = true;
      s.s = true;
      s.type = sreg == 1 ? 0xb : 0x3;
      s.limit = 0xffff;
      s.db = false;
      s.g = false;
    }
  }
  sync_seg_bases();
}

void Vcpu::far_transfer_real(std::uint16_t sel, std::uint32_t off, bool call, std::uint32_t ret_eip,
                             unsigned opsize) {
  const unsigned bytes = opsize / 8;
  if (call) {
    const std::uint32_t esp0 = reg32(4);
    try {
      push(cs_.selector, bytes);
      push(ret_eip, bytes);
    } catch (...) {
      reg32(4) = esp0;
      throw;
    }
  }
  load_segment_real(1, sel);
  eip_ = bytes == 2 ? off & 0xffff : off;
}

void Vcpu::far_return_real(unsigned opsize, std::uint32_t release) {
  const unsigned bytes = opsize / 8;
  const std::uint32_t esp0 = reg32(4);
  std::uint32_t ip, sel;
  try {
    ip = pop(bytes);
    sel = pop(bytes);
  } catch (...) {
    reg32(4) = esp0;
    throw;
  }
  const std::uint32_t mask = stack_mask();
  reg32(4) = (reg32(4) & ~mask) | ((reg32(4) + release) & mask);
  load_segment_real(1, static_cast<std::uint16_t>(sel));
  eip_ = bytes == 2 ? ip & 0xffff : ip;
}

// The frame is three words on SS:SP with SP wrapping at 64 KiB whatever
// SS.B says (QEMU's rule); no error code in real mode.
void Vcpu::deliver_real_mode(std::uint8_t vector, std::uint32_t return_eip) {
  if (vector * 4u + 3 > idtr_.limit) raise(13, true, vector * 8u + 2);
  const std::uint32_t entry = read(static_cast<std::uint32_t>(idtr_.base) + vector * 4u, 4, false);
  const std::uint32_t ss_base = static_cast<std::uint32_t>(ss_.base);
  std::uint32_t sp = reg32(4) & 0xffff;
  for (const std::uint32_t word : {eflags(), std::uint32_t{cs_.selector}, return_eip}) {
    sp = (sp - 2) & 0xffff;
    write(ss_base + sp, 2, word & 0xffff, false);
  }
  reg32(4) = (reg32(4) & 0xffff0000u) | sp;
  load_segment_real(1, static_cast<std::uint16_t>(entry >> 16));
  eip_ = entry & 0xffff;
  set_eflags(eflags() & ~(kIF | kTF | kAC | kRF));
  run_state_ = api::RunState::Runnable;
}

void Vcpu::iret_real_mode(unsigned opsize) {
  const unsigned bytes = opsize / 8;
  const std::uint32_t ss_base = static_cast<std::uint32_t>(ss_.base);
  std::uint32_t sp = reg32(4) & 0xffff;  // as deliver_real_mode: SP wraps at 64 KiB
  auto pop_one = [&] {
    const std::uint32_t v = read(ss_base + sp, bytes, cpl_ == 3);
    sp = (sp + bytes) & 0xffff;
    return v;
  };
  const std::uint32_t new_eip = pop_one();
  const std::uint16_t new_cs = static_cast<std::uint16_t>(pop_one());
  const std::uint32_t new_flags = pop_one();
  reg32(4) = (reg32(4) & 0xffff0000u) | sp;
  // IOPL only in real mode (virtual-8086 mode keeps it); VM never.
  std::uint32_t mask = kArithAndDf | kTF | kIF | kNT | kRF | kAC | kID | (v86() ? 0 : kIOPL);
  if (bytes == 2) mask &= 0xffff;
  load_segment_real(1, new_cs);
  eip_ = new_eip;
  set_eflags((eflags() & ~mask) | (new_flags & mask));
}

void Vcpu::iret_to_v86(std::uint32_t new_eip, std::uint16_t new_cs, std::uint32_t new_eflags) {
  std::uint32_t rest[6];  // ESP SS ES DS FS GS
  pop_words(rest, 6);
  const std::uint32_t mask = kArithAndDf | kTF | kIF | kIOPL | kNT | kVM | kAC | kID | kVIF | kVIP;
  set_eflags((eflags() & ~mask) | (new_eflags & mask));
  cpl_ = 3;
  cs_ = v86_segment(new_cs);
  ss_ = v86_segment(static_cast<std::uint16_t>(rest[1]));
  es_ = v86_segment(static_cast<std::uint16_t>(rest[2]));
  ds_ = v86_segment(static_cast<std::uint16_t>(rest[3]));
  fs_ = v86_segment(static_cast<std::uint16_t>(rest[4]));
  gs_ = v86_segment(static_cast<std::uint16_t>(rest[5]));
  reg32(4) = rest[0];
  eip_ = new_eip & 0xffff;
  sync_seg_bases();
}

void Vcpu::deliver_from_v86(const api::Segment& target, std::uint16_t sel, std::uint32_t offset,
                            const std::array<std::uint32_t, 6>& frame_words, unsigned frame_count,
                            std::uint32_t new_eflags) {
  // Only a non-conforming ring-0 handler can take it.
  if ((target.type & 4) || target.dpl != 0) raise(13, true, sel & 0xfffc);
  const auto [new_esp, new_ss] = stack_from_tss(0);
  const api::Segment nss = decode_segment_descriptor(read_descriptor(new_ss, new_ss & 0xfffc), new_ss);
  require(check_interrupt_stack(nss, new_ss, 0));
  // GS FS DS ES, then SS ESP EFLAGS CS EIP (and the error code), on the ring-0 stack.
  std::array<std::uint32_t, 10> words{gs_.selector, fs_.selector, ds_.selector, es_.selector};
  unsigned n = 4;
  for (unsigned i = 0; i < frame_count; ++i) words[n++] = frame_words[i];
  const unsigned saved_cpl = cpl_;
  const api::Segment saved_ss = ss_;
  const std::uint32_t saved_esp = reg32(4);
  cpl_ = 0;
  ss_ = nss;
  reg32(4) = new_esp;
  try {
    push_words(words.data(), n);
  } catch (...) {
    cpl_ = saved_cpl;
    ss_ = saved_ss;
    reg32(4) = saved_esp;
    throw;
  }
  for (int i : {0, 3, 4, 5}) {  // ES DS FS GS: null
    api::Segment null;
    null.unusable = true;
    seg(i) = null;
  }
  load_cs(sel, 0);
  eip_ = offset;
  set_eflags(new_eflags);  // VM, TF, NT, RF clear (IF too through an interrupt gate)
  run_state_ = api::RunState::Runnable;
}

void Vcpu::load_v86_task_segments(const std::array<std::uint16_t, 6>& selectors) {
  for (int i = 0; i < 6; ++i) seg(i) = v86_segment(selectors[static_cast<std::size_t>(i)]);
  cpl_ = 3;
  sync_seg_bases();
}

}  // namespace modevisor::bt
