// Whole-VM tests: small hand-written 32-bit guests run under the BT engine
// with a fake platform and a real memfd-backed guest RAM.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <thread>

#include "bt_test_machine.hpp"

using namespace bttest;

BT_GUEST_PROGRAM(hello, 0x100000,
  "  mov esi, BASE + msg - hello_start\n"
  "  mov ecx, 5\n"
  "1: mov al, [esi]\n"
  "  mov dx, 0x3f8\n"
  "  out dx, al\n"
  "  inc esi\n"
  "  dec ecx\n"
  "  jnz 1b\n"
  "  mov al, 0\n"
  "  out 0xf4, al\n"
  "msg: .ascii \"hello\"\n")

TEST(BtVm, HelloPrintsToSerialAndExits) {
  Machine m;
  m.load(hello_start, hello_end);
  RunExit r = m.run();
  EXPECT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  EXPECT_EQ(m.plat.serial, "hello");
  EXPECT_EQ(m.plat.exit_code, 0);
  EXPECT_EQ(m.state.gpr[gpr::rax] & 0xff, 0u);
  EXPECT_GT(m.counter("bt.blocks_translated"), 0u);
  EXPECT_EQ(m.counter("bt.io_exits"), 6u);
}

BT_GUEST_PROGRAM(fib, 0x100000,
  "  mov eax, 20\n"
  "  call fibf\n"
  "  out 0x80, eax\n"
  "  xor ecx, ecx\n"
  "  xor eax, eax\n"
  "  mov ecx, 1000\n"
  "2: add eax, ecx\n"
  "  loop 2b\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  "fibf: cmp eax, 2\n"
  "  jb 9f\n"
  "  push eax\n"
  "  dec eax\n"
  "  call fibf\n"
  "  mov edx, eax\n"
  "  pop eax\n"
  "  push edx\n"
  "  sub eax, 2\n"
  "  call fibf\n"
  "  pop edx\n"
  "  add eax, edx\n"
  "9: ret\n")

TEST(BtVm, RecursionCallRetAndLoop) {
  Machine m;
  m.load(fib_start, fib_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 2u);
  EXPECT_EQ(m.plat.post[0], 6765u);
  EXPECT_EQ(m.plat.post[1], 500500u);
  EXPECT_EQ(m.state.gpr[gpr::rsp], 0x80000u);
  // Returns are served by the inline lookup; loops by chained jumps.
  EXPECT_GT(m.counter("bt.indirect_lookup_hits"), 10000u);
  EXPECT_GT(m.counter("bt.chained_jumps"), 0u);
  EXPECT_GE(m.counter("bt.indirect_lookup_misses"), 1u);
  EXPECT_LT(m.counter("bt.indirect_lookup_misses"), 20u);
}

BT_GUEST_PROGRAM(exc, 0x100000,
  "  int 0x30\n"
  "  mov eax, 5\n"
  "  xor ecx, ecx\n"
  "  div ecx\n"
  "  ud2\n"
  "  mov eax, 0xf0000000\n"
  "  mov dword ptr [eax], 0xabcd1234\n"
  "  mov ebx, [eax]\n"
  "  movzx ecx, word ptr [eax+2]\n"
  "  mov eax, ebx\n"
  "  out 0x80, eax\n"
  "  mov eax, ecx\n"
  "  out 0x80, eax\n"
  "  mov eax, [0xfe000000]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl exc_h30\n"
  "exc_h30: push eax\n"
  "  mov eax, 0x30\n"
  "  out 0x80, eax\n"
  "  pop eax\n"
  "  iretd\n"
  ".globl exc_hde\n"
  "exc_hde: push eax\n"
  "  mov eax, 0xde\n"
  "  out 0x80, eax\n"
  "  pop eax\n"
  "  add dword ptr [esp], 2\n"
  "  iretd\n"
  ".globl exc_hud\n"
  "exc_hud: push eax\n"
  "  mov eax, 0x6\n"
  "  out 0x80, eax\n"
  "  pop eax\n"
  "  add dword ptr [esp], 2\n"
  "  iretd\n")
extern "C" const unsigned char exc_h30[], exc_hde[], exc_hud[];

TEST(BtVm, SoftwareInterruptsExceptionsAndMmio) {
  Machine m;
  m.load(exc_start, exc_end);
  m.tables();
  m.gate(0x30, exc_h30, exc_start);
  m.gate(0, exc_hde, exc_start);
  m.gate(6, exc_hud, exc_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 6u);
  EXPECT_EQ(m.plat.post[0], 0x30u);
  EXPECT_EQ(m.plat.post[1], 0xdeu);
  EXPECT_EQ(m.plat.post[2], 0x6u);
  EXPECT_EQ(m.plat.post[3], 0xabcd1234u);
  EXPECT_EQ(m.plat.post[4], 0xabcdu);
  EXPECT_EQ(m.plat.post[5], 0xffffffffu);  // nothing there: reads all ones
  EXPECT_EQ(m.state.gpr[gpr::rsp], 0x80000u);
  EXPECT_GE(m.counter("bt.mmio_exits"), 3u);
}

BT_GUEST_PROGRAM(garbage, 0x100000, "  .byte 0xff, 0xff, 0xff, 0xff\n")

TEST(BtVm, GarbageCodeWithoutIdtTripleFaults) {
  Machine m;
  m.load(garbage_start, garbage_end);
  m.state.idtr = {0, 0};
  RunExit r = m.run();
  EXPECT_EQ(r.kind, ExitKind::Shutdown);
  EXPECT_NE(r.diagnostic.find("triple fault"), std::string::npos) << r.diagnostic;
  EXPECT_NE(r.diagnostic.find("EIP=00100000"), std::string::npos) << r.diagnostic;
}

BT_GUEST_PROGRAM(smc, 0x100000,
  "  mov ecx, 3\n"
  "1: call target\n"
  "  out 0x80, eax\n"
  "  add dword ptr [BASE + target - smc_start + 1], 1\n"
  "  loop 1b\n"
  "  out 0xf4, al\n"
  "target: mov eax, 100\n"
  "  ret\n")

TEST(BtVm, SelfModifyingCodeIsRetranslated) {
  Machine m;
  m.load(smc_start, smc_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 3u);
  EXPECT_EQ(m.plat.post[0], 100u);
  EXPECT_EQ(m.plat.post[1], 101u);
  EXPECT_EQ(m.plat.post[2], 102u);
  EXPECT_GE(m.counter("bt.smc_invalidations"), 2u);
}

BT_GUEST_PROGRAM(spin, 0x100000, "1: add eax, 1\n  jmp 1b\n")

TEST(BtVm, KickStopsATightLoop) {
  Machine m;
  m.load(spin_start, spin_end);
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    m.cpu->kick();
  });
  RunExit r = m.run();
  t.join();
  EXPECT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  EXPECT_GT(m.state.gpr[gpr::rax], 1000u);
}

BT_GUEST_PROGRAM(counter, 0x100000,
  "  mov ecx, 0\n"
  "1: inc ecx\n"
  "  mov eax, ecx\n"
  "  out 0x80, eax\n"
  "  cmp ecx, 3\n"
  "  jne 2f\n"
  "  out 0xf4, al\n"
  "2: cmp ecx, 6\n"
  "  jne 1b\n"
  "  mov al, 1\n"
  "  out 0xf4, al\n")

TEST(BtVm, SaveAndLoadResumeOnAFreshVcpu) {
  Machine m;
  m.load(counter_start, counter_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 3u);
  VcpuState saved = m.cpu->save();
  EXPECT_EQ(saved.gpr[gpr::rcx], 3u);
  // A new vCPU (as after a mode switch) continues from the saved state.
  m.cpu = std::make_unique<Vcpu>(m.mem, m.plat, m.log, 0);
  m.plat.stop = false;
  m.state = saved;
  r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  EXPECT_EQ(m.plat.post.size(), 6u);
  EXPECT_EQ(m.plat.exit_code, 1);
}

// IA32_TSC_AUX: WRMSR, then RDPID, RDTSCP's ECX and RDMSR read it; a fresh
// vCPU loaded from the saved state reads the same value (the MSR travels in
// VcpuState::msrs, as snapshots and migration carry it).  STAC/CLAC at CPL 0
// set and clear EFLAGS.AC.
BT_GUEST_PROGRAM(tscaux, 0x100000,
  "  mov ecx, 0xc0000103\n"
  "  cmp ebx, 1\n"
  "  je 1f\n"
  "  mov eax, 0x5eed1234\n"
  "  xor edx, edx\n"
  "  wrmsr\n"
  "1: .byte 0xf3, 0x0f, 0xc7, 0xf8\n"   // rdpid eax
  "  out 0x80, eax\n"
  "  xor ecx, ecx\n"
  "  rdtscp\n"
  "  mov eax, ecx\n"
  "  out 0x80, eax\n"
  "  mov ecx, 0xc0000103\n"
  "  rdmsr\n"
  "  out 0x80, eax\n"
  "  .byte 0x0f, 0x01, 0xcb\n"          // stac
  "  pushfd\n"
  "  pop eax\n"
  "  out 0x80, eax\n"
  "  .byte 0x0f, 0x01, 0xca\n"          // clac
  "  pushfd\n"
  "  pop eax\n"
  "  out 0x80, eax\n"
  "  mov ebx, 1\n"
  "  out 0xf4, al\n")

TEST(BtVm, TscAuxFeedsRdpidAndRdtscpAndTravelsWithTheState) {
  Machine m;
  m.load(tscaux_start, tscaux_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 5u);
  EXPECT_EQ(m.plat.post[0], 0x5eed1234u) << "rdpid";
  EXPECT_EQ(m.plat.post[1], 0x5eed1234u) << "rdtscp ecx";
  EXPECT_EQ(m.plat.post[2], 0x5eed1234u) << "rdmsr";
  EXPECT_TRUE(m.plat.post[3] & 0x40000u) << "stac sets AC";
  EXPECT_FALSE(m.plat.post[4] & 0x40000u) << "clac clears it";
  const VcpuState saved = m.cpu->save();
  ASSERT_TRUE(saved.msr(0xc0000103).has_value());
  EXPECT_EQ(*saved.msr(0xc0000103), 0x5eed1234u);
  // A new vCPU runs the program again from the start, skipping the WRMSR (EBX = 1).
  m.cpu = std::make_unique<Vcpu>(m.mem, m.plat, m.log, 0);
  m.plat.stop = false;
  m.plat.post.clear();
  m.state = saved;
  m.state.rip = kBase;
  r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 5u);
  EXPECT_EQ(m.plat.post[0], 0x5eed1234u);
  EXPECT_EQ(m.plat.post[2], 0x5eed1234u);
}

// Without these features in the VM's CPU model, RDPID, RDTSCP, STAC and CLAC
// raise #UD and a MOV to CR4 setting SMEP, SMAP or UMIP raises #GP(0).
BT_GUEST_PROGRAM(nofeat, 0x100000,
  "  .byte 0xf3, 0x0f, 0xc7, 0xf8\n"  // rdpid eax: #UD
  "  rdtscp\n"                          // #UD
  "  .byte 0x0f, 0x01, 0xcb\n"         // stac: #UD
  "  mov eax, cr4\n"
  "  or eax, 0x100000\n"               // SMEP
  "  mov cr4, eax\n"                   // #GP(0)
  "  mov eax, cr4\n"
  "  or eax, 0x800\n"                  // UMIP
  "  mov cr4, eax\n"                   // #GP(0)
  "  mov ecx, 0xc0000103\n"
  "  rdmsr\n"                          // #GP(0): no TSC_AUX
  "  mov al, 0\n"
  "  out 0xf4, al\n"
  ".globl nofeat_ud\n"
  "nofeat_ud:\n"                        // #UD handler: report 6, skip 3 bytes (all three are 3 bytes or more)
  "  mov eax, 6\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp]\n"
  "  cmp byte ptr [eax], 0xf3\n"
  "  jne 1f\n"
  "  add dword ptr [esp], 1\n"
  "1: add dword ptr [esp], 3\n"
  "  iretd\n"
  ".globl nofeat_gp\n"
  "nofeat_gp:\n"                        // #GP handler: report 13 and the error code, skip 3 (mov cr4) or 2 (rdmsr)
  "  mov eax, 13\n"
  "  out 0x80, eax\n"
  "  pop eax\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp]\n"
  "  cmp byte ptr [eax + 1], 0x32\n"    // rdmsr: 0f 32
  "  je 2f\n"
  "  add dword ptr [esp], 1\n"
  "2: add dword ptr [esp], 2\n"
  "  iretd\n")
extern "C" const unsigned char nofeat_ud[], nofeat_gp[];

TEST(BtVm, FeaturesTheCpuModelLacksAreRefused) {
  Machine m;
  m.tables();
  modevisor::api::CpuidLeaf vendor;
  vendor.eax = 1;
  modevisor::api::CpuidLeaf basic;
  basic.function = 1;
  basic.edx = 1;
  m.cpu->set_cpu_model({vendor, basic});
  m.load(nofeat_start, nofeat_end);
  m.gate(6, nofeat_ud, nofeat_start);
  m.gate(13, nofeat_gp, nofeat_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  const std::vector<std::uint32_t> expected = {6, 6, 6, 13, 0, 13, 0, 13, 0};
  EXPECT_EQ(m.plat.post, expected);
  EXPECT_EQ(m.state.cr4 & ((1u << 11) | (1u << 20)), 0u);
}

TEST(BtVm, RefusesLongModeState) {
  Machine m;
  m.state.efer = 0x500;
  EXPECT_THROW(m.cpu->load(m.state), MonitorError);
}

BT_GUEST_PROGRAM(irq, 0x100000,
  "  sti\n"
  "1: hlt\n"
  "  cmp dword ptr [0x5000], 3\n"
  "  jb 1b\n"
  "  mov eax, [0x5000]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl irq_h20\n"
  "irq_h20: inc dword ptr [0x5000]\n"
  "  iretd\n")
extern "C" const unsigned char irq_h20[];

TEST(BtVm, ExternalInterruptsWakeHlt) {
  Machine m;
  m.load(irq_start, irq_end);
  m.tables();
  m.gate(0x20, irq_h20, irq_start);
  m.plat.on_wait = [&] { m.plat.irqs.push_back(0x20); };
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 1u);
  EXPECT_EQ(m.plat.post[0], 3u);
  EXPECT_EQ(m.counter("bt.interrupts_delivered"), 3u);
}

// An NMI raised by the guest's own I/O is delivered through IDT vector 2
// before the next instruction; a second one raised inside the handler waits
// for its IRET (NMIs do not nest), then is delivered too.
BT_GUEST_PROGRAM(nmi, 0x100000,
  "  out 0x82, al\n"
  "  mov eax, [0x5000]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl nmi_h2\n"
  "nmi_h2: inc dword ptr [0x5000]\n"
  "  cmp dword ptr [0x5000], 1\n"
  "  jne 1f\n"
  "  out 0x82, al\n"
  "  mov eax, [0x5000]\n"
  "  out 0x80, eax\n"
  "1: iretd\n")
extern "C" const unsigned char nmi_h2[];

TEST(BtVm, NmisAreDeliveredAndBlockedUntilIret) {
  Machine m;
  m.load(nmi_start, nmi_end);
  m.tables();
  m.gate(2, nmi_h2, nmi_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  EXPECT_EQ(m.plat.post, (std::vector<std::uint32_t>{1, 2})) << "the second NMI came after the first one's IRET";
  EXPECT_EQ(m.plat.nmis_taken, 2);
  EXPECT_EQ(m.counter("bt.nmis_delivered"), 2u);
  EXPECT_FALSE(m.state.events.nmi_masked);
}

TEST(BtVm, AVcpuWaitingForSipiRunsNoCode) {
  Machine m;
  m.load(nmi_start, nmi_end);
  m.state.run_state = RunState::WaitForSipi;
  RunExit r = m.run();
  EXPECT_EQ(r.kind, ExitKind::Stopped);
  EXPECT_TRUE(m.plat.outs.empty());
  EXPECT_EQ(m.state.run_state, RunState::WaitForSipi);
}

BT_GUEST_PROGRAM(fpu, 0x100000,
  "  mov dword ptr [0x5000], 7\n"
  "  mov eax, 3\n"
  "  cvtsi2sd xmm1, eax\n"
  "  fild dword ptr [0x5000]\n"
  "  out 0x80, eax\n"
  "  mulsd xmm1, xmm1\n"
  "  cvttsd2si eax, xmm1\n"
  "  out 0x80, eax\n"
  "  fimul dword ptr [0x5000]\n"
  "  fistp dword ptr [0x5004]\n"
  "  mov eax, [0x5004]\n"
  "  out 0x80, eax\n"
  "  mov eax, cr0\n"
  "  or eax, 8\n"
  "  mov cr0, eax\n"
  "  fld1\n"
  "  fistp dword ptr [0x5008]\n"
  "  mov eax, [0x5008]\n"
  "  out 0x80, eax\n"
  "  movd xmm2, eax\n"
  "  out 0xf4, al\n"
  ".globl fpu_nm\n"
  "fpu_nm: clts\n"
  "  mov eax, 0x77\n"
  "  out 0x80, eax\n"
  "  iretd\n")
extern "C" const unsigned char fpu_nm[];

TEST(BtVm, FpuAndSseStateSurviveMonitorExitsAndTsTraps) {
  Machine m;
  m.load(fpu_start, fpu_end);
  m.tables();
  m.gate(7, fpu_nm, fpu_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 5u);
  EXPECT_EQ(m.plat.post[0], 3u);
  EXPECT_EQ(m.plat.post[1], 9u);
  EXPECT_EQ(m.plat.post[2], 49u);
  EXPECT_EQ(m.plat.post[3], 0x77u);  // #NM from fld1 with CR0.TS, handler did CLTS
  EXPECT_EQ(m.plat.post[4], 1u);
  EXPECT_EQ(m.state.cr0 & 8, 0u);
  // XMM2 (FXSAVE offset 160+32) holds the last value; FCW is the reset 0x37f.
  std::uint32_t xmm2, fcw = m.state.fpu.fxsave[0] | (m.state.fpu.fxsave[1] << 8);
  std::memcpy(&xmm2, m.state.fpu.fxsave.data() + 160 + 32, 4);
  EXPECT_EQ(xmm2, 1u);
  EXPECT_EQ(fcw, 0x37fu);
}

BT_GUEST_PROGRAM(ring3gp, 0x100000,
  "  push 0x23\n"
  "  push 0x90000\n"
  "  push 0x202\n"
  "  push 0x1b\n"
  "  push BASE + user3 - ring3gp_start\n"
  "  iretd\n"
  "user3: pushfd\n"
  "  pop eax\n"
  "  cli\n"
  "  out 0xf4, al\n"
  ".globl ring3gp_gp\n"
  "ring3gp_gp: push eax\n"
  "  mov eax, [esp+4]\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp+8]\n"
  "  out 0x80, eax\n"
  "  pop eax\n"
  "  out 0x80, eax\n"
  "  mov al, 3\n"
  "  out 0xf4, al\n")
extern "C" const unsigned char ring3gp_gp[];

TEST(BtVm, PrivilegedInstructionInUserModeRaisesGp) {
  Machine m;
  m.load(ring3gp_start, ring3gp_end);
  m.tables();
  m.gate(13, ring3gp_gp, ring3gp_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 3u);
  EXPECT_EQ(m.plat.post[0], 0u);                  // error code
  EXPECT_EQ(m.plat.post[1], kBase + 0x16u);       // EIP of the CLI
  EXPECT_EQ(m.plat.post[2], 0x202u);              // PUSHFD in user mode: IF=1, IOPL=0
  EXPECT_EQ(m.plat.exit_code, 3);
}

// A null FS or GS in flat protected-mode code: loading it is allowed, an
// access through it is #GP(0) at the instruction (translated code's host
// address becomes non-canonical; the monitor's emulation checks it too).
BT_GUEST_PROGRAM(nullfs, 0x100000,
  "  mov dword ptr [0x5000], 0x1234\n"
  "  mov ax, 0x10\n"
  "  mov fs, ax\n"
  "  mov eax, fs:[0x5000]\n"          // a data segment: reads
  "  out 0x80, eax\n"
  "  xor eax, eax\n"
  "  mov fs, ax\n"                    // null: loads fine
  "  mov gs, ax\n"
  "  mov ebx, 0x77\n"
  ".globl nullfs_fault1\n"
  "nullfs_fault1: mov ebx, fs:[0x5000]\n"   // #GP(0); EBX stays
  "  mov eax, ebx\n"
  "  out 0x80, eax\n"
  ".globl nullfs_fault2\n"
  "nullfs_fault2: add dword ptr gs:[ecx*4+0x5000], 1\n"
  "  mov eax, [0x5000]\n"             // not incremented
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl nullfs_gp\n"
  "nullfs_gp: pop eax\n"              // the error code
  "  out 0x80, eax\n"
  "  pop eax\n"                       // EIP of the faulting instruction
  "  out 0x80, eax\n"
  "  push eax\n"
  "  cmp byte ptr [eax], 0x64\n"      // an FS prefix: 7 bytes (mov ebx, fs:[disp32])
  "  jne 1f\n"
  "  add dword ptr [esp], 7\n"
  "  iretd\n"
  "1: add dword ptr [esp], 9\n"       // gs: add dword [ecx*4+disp32], imm8
  "  iretd\n")
extern "C" const unsigned char nullfs_gp[], nullfs_fault1[], nullfs_fault2[];

TEST(BtVm, ANullFsOrGsRefusesAccessesWithGp) {
  Machine m;
  m.load(nullfs_start, nullfs_end);
  m.tables();
  m.gate(13, nullfs_gp, nullfs_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  const std::uint32_t f1 = kBase + static_cast<std::uint32_t>(nullfs_fault1 - nullfs_start);
  const std::uint32_t f2 = kBase + static_cast<std::uint32_t>(nullfs_fault2 - nullfs_start);
  const std::vector<std::uint32_t> expected = {0x1234u, 0u, f1, 0x77u, 0u, f2, 0x1234u};
  EXPECT_EQ(m.plat.post, expected);
  EXPECT_EQ(m.counter("bt.exceptions_delivered"), 2u);
}

BT_GUEST_PROGRAM(irqsave, 0x100000,
  "  sti\n"
  "  stc\n"
  "  pushfd\n"
  "  cli\n"
  "  pushfd\n"
  "  pop eax\n"
  "  out 0x80, eax\n"
  "  popfd\n"
  "  pushfd\n"
  "  pop eax\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n")

TEST(BtVm, InlinePushfAndCliKeepEflagsExact) {
  Machine m;
  m.load(irqsave_start, irqsave_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 2u);
  EXPECT_EQ(m.plat.post[0], 0x003u);  // CF, bit 1; IF cleared by the inline CLI
  EXPECT_EQ(m.plat.post[1], 0x203u);  // POPFD restored IF
  EXPECT_EQ(m.state.rflags & 0x200, 0x200u);
}

BT_GUEST_PROGRAM(spinirq, 0x100000,
  "  sti\n"
  "1: add ecx, 1\n"
  "  cmp dword ptr [0x5000], 0\n"
  "  je 1b\n"
  "  mov eax, [0x5000]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl spinirq_h\n"
  "spinirq_h: mov dword ptr [0x5000], 0x41\n"
  "  iretd\n")
extern "C" const unsigned char spinirq_h[];

TEST(BtVm, AsynchronousInterruptReachesAChainedLoop) {
  Machine m;
  m.load(spinirq_start, spinirq_end);
  m.tables();
  m.gate(0x41, spinirq_h, spinirq_start);
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    m.plat.async_irq = 0x41;
  });
  RunExit r = m.run();
  t.join();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 1u);
  EXPECT_EQ(m.plat.post[0], 0x41u);
  EXPECT_GT(m.state.gpr[gpr::rcx], 1000u);   // it really spun in translated code
  EXPECT_GE(m.counter("bt.irq_check_exits"), 1u);
}

BT_GUEST_PROGRAM(outside, 0x100000, "  mov eax, 0xfe000000\n  jmp eax\n")

TEST(BtVm, ExecutingUnclaimedBusSpaceIsInvalidOpcode) {
  Machine m;
  m.load(outside_start, outside_end);
  m.state.idtr = {0, 0};
  RunExit r = m.run();
  EXPECT_EQ(r.kind, ExitKind::Shutdown) << r.diagnostic;  // #UD without an IDT
  EXPECT_NE(r.diagnostic.find("EIP=fe000000"), std::string::npos) << r.diagnostic;
}

BT_GUEST_PROGRAM(devcode, 0x100000, "  mov eax, 0xf0000000\n  jmp eax\n")

TEST(BtVm, ExecutingDeviceMemoryIsAnErrorNotACrash) {
  Machine m;
  m.load(devcode_start, devcode_end);
  RunExit r = m.run();
  EXPECT_EQ(r.kind, ExitKind::Error);
  EXPECT_NE(r.diagnostic.find("outside RAM"), std::string::npos) << r.diagnostic;
}

// Data breakpoints: DR1 watches writes to the dword at 0x5000, DR3 reads
// and writes of the word at 0x6002.  Each hit is a #DB trap after the
// instruction (its write done, the saved EIP the next one's, DR6.Bn); reads
// of a write breakpoint, and accesses beside a range, do not hit.  A REP
// STOSB through 0x6000-0x6007 traps after the iteration that wrote 0x6002,
// and after the one that wrote 0x6003, with ECX counted down to that point
// and EIP still on the STOSB.
BT_GUEST_PROGRAM(databp, 0x100000,
  "  xor ecx, ecx\n"
  "  mov eax, 0x5000\n"
  "  mov dr1, eax\n"
  "  mov eax, 0x6002\n"
  "  mov dr3, eax\n"
  "  mov eax, 0x70d00044\n"          // L1 R/W1 01 LEN1 11; L3 R/W3 11 LEN3 01
  "  mov dr7, eax\n"
  "  mov eax, [0x5000]\n"             // a read: no hit (DR1 watches writes)
  "  mov dword ptr [0x5004], 1\n"     // beside it: no hit
  ".globl databp_w1\n"
  "databp_w1: mov dword ptr [0x5000], 0x11\n"
  ".globl databp_after_w1\n"
  "databp_after_w1: mov eax, [0x6000]\n"  // the dword at 0x6000 covers 0x6002: DR3
  ".globl databp_after_r3\n"
  "databp_after_r3: cld\n"
  "  mov edi, 0x6000\n"
  "  mov ecx, 8\n"
  "  mov al, 0x22\n"
  ".globl databp_rep\n"
  "databp_rep: rep stosb\n"
  "  mov eax, [0x5000]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl databp_db\n"
  "databp_db: push eax\n"
  "  mov eax, dr6\n"
  "  and eax, 0xf\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp + 4]\n"            // the saved EIP
  "  out 0x80, eax\n"
  "  mov eax, ecx\n"
  "  out 0x80, eax\n"
  "  xor eax, eax\n"
  "  mov dr6, eax\n"
  "  pop eax\n"
  "  iretd\n")
extern "C" const unsigned char databp_after_w1[], databp_after_r3[], databp_rep[], databp_db[];

TEST(BtVm, DataBreakpointsTrapAfterTheAccessThatHitThem) {
  Machine m;
  m.load(databp_start, databp_end);
  m.tables();
  m.gate(1, databp_db, databp_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  auto at = [&](const unsigned char* label) { return kBase + static_cast<std::uint32_t>(label - databp_start); };
  const std::vector<std::uint32_t> expected = {
      2u, at(databp_after_w1), 0u,   // the write to 0x5000 (ECX 0 then)
      8u, at(databp_after_r3), 0u,   // the read of 0x6000-0x6003
      8u, at(databp_rep), 5u,        // the REP STOSB's third byte (0x6002): 5 left
      8u, at(databp_rep), 4u,        // and its fourth (0x6003)
      0x11u};
  EXPECT_EQ(m.plat.post, expected);
  EXPECT_EQ(m.mem.r32(0x6004), 0x22222222u);  // the REP went on after the handler
}

// DR7.GD: a MOV from a debug register is a #DB fault before it runs
// (DR6.BD, the saved EIP the MOV's); entering the handler clears GD, so the
// handler reads DR6 and DR7 and the MOV after the IRET runs.
BT_GUEST_PROGRAM(gdetect, 0x100000,
  "  mov esp, 0x8000\n"
  "  mov eax, 0x2400\n"              // GD
  "  mov dr7, eax\n"
  ".globl gdetect_mov\n"
  "gdetect_mov: mov eax, dr0\n"      // #DB; the handler lets it run again
  "  mov eax, 0x11\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl gdetect_db\n"
  "gdetect_db: mov eax, dr6\n"
  "  and eax, 0xe00f\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp]\n"
  "  out 0x80, eax\n"
  "  mov eax, dr7\n"
  "  out 0x80, eax\n"
  "  iretd\n")
extern "C" const unsigned char gdetect_mov[], gdetect_db[];

TEST(BtVm, GeneralDetectMakesAMovFromADebugRegisterFaultOnce) {
  Machine m;
  m.load(gdetect_start, gdetect_end);
  m.tables();
  m.gate(1, gdetect_db, gdetect_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  const std::uint32_t mov = kBase + static_cast<std::uint32_t>(gdetect_mov - gdetect_start);
  const std::vector<std::uint32_t> expected = {0x2000u, mov, 0x400u, 0x11u};
  EXPECT_EQ(m.plat.post, expected);
}

// A data breakpoint on a stack slot (R/W 01 on the dword at 0x7ffc): the
// PUSH that writes it and the CALL that pushes its return address there
// trap, the POP and the RET that read it do not; the stack page is emulated
// meanwhile and the values come out right.  (With R/W 11 the handler's own
// IRET would read the slot too, when the #DB frame lies on it.)
BT_GUEST_PROGRAM(stackbp, 0x100000,
  "  mov esp, 0x8000\n"
  "  mov eax, 0x7ffc\n"
  "  mov dr0, eax\n"
  "  mov eax, 0xd0003\n"             // L0 G0; R/W0 01, LEN0 11
  "  mov dr7, eax\n"
  "  push 0x1234\n"
  "  pop ebx\n"
  "  call 1f\n"
  "  mov eax, ebx\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  "1: ret\n"
  ".globl stackbp_db\n"
  "stackbp_db: push eax\n"           // below 0x7ffc: no hit
  "  mov eax, dr6\n"
  "  and eax, 0xf\n"
  "  out 0x80, eax\n"
  "  xor eax, eax\n"
  "  mov dr6, eax\n"
  "  pop eax\n"
  "  iretd\n")
extern "C" const unsigned char stackbp_db[];

TEST(BtVm, AWriteBreakpointOnTheStackSeesPushAndCallNotPopAndRet) {
  Machine m;
  m.load(stackbp_start, stackbp_end);
  m.tables();
  m.gate(1, stackbp_db, stackbp_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  const std::vector<std::uint32_t> expected = {1u, 1u, 0x1234u};
  EXPECT_EQ(m.plat.post, expected);
}

BT_GUEST_PROGRAM(mmiorw, 0x100000,
  "  mov dword ptr [0xf0000000], 40\n"
  "  add dword ptr [0xf0000000], 2\n"
  "  mov ah, 0x10\n"
  "  or ah, [0xf0000000]\n"
  "  movzx eax, ah\n"
  "  out 0x80, eax\n"
  "  mov ecx, 0xf0000000\n"
  "  cmp dword ptr [ecx], 42\n"
  "  sete al\n"
  "  out 0x80, eax\n"
  "  xadd [ecx+4], ecx\n"
  "  mov eax, [0xf0000004]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n")

TEST(BtVm, MmioReadModifyWriteInstructionsRunNativelyOnAScratchWord) {
  Machine m;
  m.load(mmiorw_start, mmiorw_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 3u);
  EXPECT_EQ(m.plat.post[0], 0x3au);        // 0x10 | 42
  EXPECT_EQ(m.plat.post[1] & 0xff, 1u);    // flags from the MMIO compare
  EXPECT_EQ(m.plat.post[2], 0xf0000000u);  // xadd wrote ecx + old (0) to the device
  EXPECT_EQ(m.plat.mmio[0], 42u);
}

// Bit tests with a register bit offset reach the operand's address plus the
// offset / 8: on MMIO they must reach the device word holding the bit (or
// RAM, or unassigned space), never the host memory around the stand-in the
// engine runs instructions on.
BT_GUEST_PROGRAM(mmiobits, 0x100000,
  "  mov ecx, 0xf0000800\n"
  "  mov eax, -8189\n"              // word -256 (0xf0000400), bit 3
  "  bts dword ptr [ecx], eax\n"
  "  setc dl\n"
  "  movzx eax, dl\n"
  "  out 0x80, eax\n"
  "  mov dword ptr [0xf00007fc], 0x1\n"
  "  mov ax, 0xfff0\n"              // 16-bit: word -1 (0xf00007fe), bit 0
  "  btr word ptr [ecx], ax\n"
  "  mov eax, 0x7ffffff0\n"          // +0x0ffffffc bytes: wraps to 0x7fc (RAM), bit 16
  "  btc dword ptr [ecx], eax\n"
  "  mov eax, -0x10000000\n"         // -32 MiB: unassigned, reads all ones
  "  bt dword ptr [ecx], eax\n"
  "  setc dl\n"
  "  movzx eax, dl\n"
  "  out 0x80, eax\n"
  // Many more offsets, none of them may leave the guest's own address space.
  "  mov esi, 12345\n"
  "  mov edi, 4000\n"
  "1: imul esi, esi, 1103515245\n"
  "  add esi, 12345\n"
  "  mov eax, esi\n"
  "  sar eax, 9\n"
  "  and eax, 0xfffe7fff\n"
  "  bts dword ptr [ecx], eax\n"
  "  btr word ptr [ecx], ax\n"
  "  dec edi\n"
  "  jnz 1b\n"
  "  out 0xf4, al\n")

TEST(BtVm, MmioBitTestsWithRegisterOffsetsReachTheRightWordAndNothingElse) {
  Machine m;
  m.load(mmiobits_start, mmiobits_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_GE(m.plat.post.size(), 2u);
  EXPECT_EQ(m.plat.post[0], 0u);                    // bit 3 of 0xf0000400 was clear
  EXPECT_EQ(m.plat.post[1], 1u);                    // unassigned memory reads as ones
  EXPECT_EQ(m.plat.mmio[0x400 / 4] & 0x8, 0x8u);    // set in the device
  EXPECT_EQ(m.plat.mmio[0x7fc / 4] & 0x10000, 0u);  // 16-bit btr cleared bit 0 of 0xf00007fe
  EXPECT_EQ(m.mem.r32(0x7fc), 0x10000u);            // the offset wrapped into RAM, as on a CPU
}

// SSE, x87 and FXSAVE widths on MMIO: emulated against the device in
// 8-byte pieces (a device access is at most 8 bytes), not refused.
BT_GUEST_PROGRAM(mmiosse, 0x100000,
  "  mov dword ptr [0xf0000010], 0x11111111\n"
  "  mov dword ptr [0xf0000014], 0x22222222\n"
  "  mov dword ptr [0xf0000018], 0x33333333\n"
  "  mov dword ptr [0xf000001c], 0x44444444\n"
  "  movdqu xmm0, [0xf0000010]\n"
  "  movdqu [0xf0000041], xmm0\n"      // unaligned, across device words
  "  movaps xmm1, [0xf0000010]\n"
  "  pxor xmm1, [0xf0000010]\n"
  "  movd eax, xmm1\n"
  "  out 0x80, eax\n"
  "  movq [0xf0000080], xmm0\n"
  "  fld1\n"
  "  fstp tbyte ptr [0xf00000a0]\n"
  "  fxsave [0xf0000200]\n"
  "  mov eax, 0x33333333\n"
  "  mov edx, 0x44444444\n"
  "  mov ebx, 0xaaaaaaaa\n"
  "  mov ecx, 0xbbbbbbbb\n"
  "  cmpxchg8b [0xf0000018]\n"
  "  setz al\n"
  "  movzx eax, al\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n")

TEST(BtVm, SseX87AndFxsaveOnMmioAreEmulatedNotRefused) {
  Machine m;
  m.state.cr4 = 0x600;  // OSFXSR | OSXMMEXCPT
  m.load(mmiosse_start, mmiosse_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 2u);
  EXPECT_EQ(m.plat.post[0], 0u);  // x ^ x
  EXPECT_EQ(m.plat.post[1], 1u);  // cmpxchg8b found edx:eax in the device
  EXPECT_EQ(m.plat.mmio[0x18 / 4], 0xaaaaaaaau);  // and stored ecx:ebx there
  EXPECT_EQ(m.plat.mmio[0x1c / 4], 0xbbbbbbbbu);
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(m.plat.mmio);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(bytes[0x41 + i], 0x11 * (i / 4 + 1)) << i;  // the 16 bytes movdqu read
  EXPECT_EQ(m.plat.mmio[0x80 / 4], 0x11111111u);
  EXPECT_EQ(m.plat.mmio[0x84 / 4], 0x22222222u);
  EXPECT_EQ(bytes[0xa7], 0x80);                       // 1.0 as an 80-bit real: explicit integer bit
  EXPECT_EQ(bytes[0xa8] | bytes[0xa9] << 8, 0x3fff);  // and its exponent
  EXPECT_EQ(m.plat.mmio[0x200 / 4] & 0xffff, 0x37fu);  // FXSAVE's FCW
  EXPECT_EQ(m.plat.mmio[0x218 / 4], 0x1f80u);          // and its MXCSR
}

// The stand-in is a page of its own between inaccessible guards: whatever an
// instruction run on it does beyond it faults instead of touching the heap.
TEST(BtMmioStage, IsAPageOfItsOwnBetweenGuards) {
  modevisor::bt::MmioStage stage;
  volatile std::uint8_t* p = stage.data();
  p[0] = 1;
  p[modevisor::bt::MmioStage::kBytes - 1] = 2;
  EXPECT_TRUE(stage.contains(stage.data(), modevisor::bt::MmioStage::kBytes));
  EXPECT_FALSE(stage.contains(stage.data() - 1, 1));
  EXPECT_DEATH(p[-1] = 3, "");
  EXPECT_DEATH(p[modevisor::bt::MmioStage::kBytes] = 4, "");
  EXPECT_DEATH(p[-static_cast<std::ptrdiff_t>(modevisor::bt::MmioStage::kGuard)] = 5, "");
}

// Unassigned physical addresses read as all ones and ignore writes, as on a
// PC and in QEMU: a stack above guest RAM is not a reason to stop.
BT_GUEST_PROGRAM(highstack, 0x100000,
  "  mov esp, 0x40000000\n"
  "  pop eax\n"
  "  out 0x80, eax\n"
  "  push 0x1234\n"
  "  pop ebx\n"
  "  mov eax, ebx\n"
  "  out 0x80, eax\n"
  "  push dword ptr [0x200000]\n"
  "  pop dword ptr [0x200004]\n"
  "  mov eax, [0x200004]\n"
  "  out 0x80, eax\n"
  "  call 1f\n"
  "1: mov eax, esp\n"
  "  out 0x80, eax\n"
  "  mov ebp, 0x50000000\n"
  "  leave\n"
  "  mov eax, ebp\n"
  "  out 0x80, eax\n"
  "  mov eax, esp\n"
  "  out 0x80, eax\n"
  "  mov dword ptr [0x60000000], 7\n"
  "  mov eax, [0x60000000]\n"
  "  out 0x80, eax\n"
  "  mov esp, 0x80000\n"
  "  out 0xf4, al\n")

TEST(BtVm, AStackAboveGuestRamReadsAllOnesAndGoesOn) {
  Machine m;
  m.load(highstack_start, highstack_end);
  m.mem.w32(0x200000, 0xdeadbeef);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  const std::vector<std::uint32_t> expected = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0x40000000u,
                                               0xffffffffu, 0x50000004u, 0xffffffffu};
  EXPECT_EQ(m.plat.post, expected);
}

// Translated code adds a base register and a displacement in 64 bits
// ([r12 + rbx + disp]); where the guest's 32-bit sum wraps past 4 GiB the
// access lands in a region guard, and the monitor emulates the instruction
// with the guest's wrap.  A site that wraps again becomes a monitor call.
BT_GUEST_PROGRAM(wrap, 0x100000,
  "  mov dword ptr [0x5000], 0x11223344\n"
  "  mov dword ptr [0x5004], 0x55667788\n"
  "  mov ebx, 0xfffff000\n"
  "  xor edx, edx\n"
  "  mov ecx, 100\n"
  "1: add edx, [ebx + 0x6004]\n"      // above: wraps to 0x5004
  "  loop 1b\n"
  "  mov eax, edx\n"
  "  out 0x80, eax\n"
  "  mov eax, [ebx + 0x6000]\n"       // wraps to 0x5000
  "  out 0x80, eax\n"
  "  mov esi, 0x4ff8\n"
  "  mov byte ptr [esi + 0x10], 0x99\n"  // no wrap: 0x5008
  "  mov eax, [0x5008]\n"
  "  out 0x80, eax\n"
  "  mov esi, 4\n"
  "  mov eax, [esi - 8]\n"            // below: wraps to 0xfffffffc, no RAM there
  "  out 0x80, eax\n"
  "  out 0xf4, al\n")

TEST(BtVm, OffsetSumsThatWrapPast4GiBReachTheGuestsAddress) {
  Machine m;
  m.load(wrap_start, wrap_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 4u);
  EXPECT_EQ(m.plat.post[0], 100u * 0x55667788u);
  EXPECT_EQ(m.plat.post[1], 0x11223344u);
  EXPECT_EQ(m.plat.post[2] & 0xff, 0x99u);
  EXPECT_EQ(m.plat.post[3], 0xffffffffu);  // unclaimed bus space reads all ones
  EXPECT_GE(m.counter("bt.wrapped_accesses"), 3u);
  EXPECT_LE(m.counter("bt.wrapped_accesses"), 6u) << "the loop's site became a monitor call";
}

TEST(BtVm, PageTablesOutsideRamFaultAndTripleFault) {
  Machine m;
  m.load(garbage_start, garbage_end);
  m.state.cr0 = 0x80000011;
  m.state.cr3 = 0xff000000;  // beyond RAM: entries read as not present
  RunExit r = m.run();
  EXPECT_EQ(r.kind, ExitKind::Shutdown) << r.diagnostic;
}

BT_GUEST_PROGRAM(stopper, 0x100000, "  out 0xf4, al\n")
extern "C" const unsigned char stopper_start[];

// Random bytes executed at CPL 0 with every vector handled: whatever the
// guest does, the host must survive and report a RunExit; a signal in
// monitor code would mean a host bug.
TEST(BtVm, RandomGarbageNeverCrashesTheHost) {
  std::mt19937 rng(7);
  int kinds[3] = {0, 0, 0};
  for (int round = 0; round < 60; ++round) {
    Machine m;
    m.tables();
    m.load(stopper_start, stopper_start + 2, 0x180000);
    for (unsigned v = 0; v < 256; ++v) {
      const std::uint32_t off = 0x180000;
      const std::uint64_t g = (off & 0xffff) | (0x08ull << 16) | (0x8eull << 40) | (static_cast<std::uint64_t>(off >> 16) << 48);
      m.mem.load(0x2000 + v * 8, &g, 8);
    }
    std::vector<std::uint8_t> junk(256);
    for (auto& b : junk) b = static_cast<std::uint8_t>(rng());
    m.mem.load(kBase, junk.data(), junk.size());
    if (std::getenv("BT_SHOW_GARBAGE") && round == std::atoi(std::getenv("BT_SHOW_GARBAGE"))) {
      for (int i = 0; i < 40; ++i) std::printf("%02x ", junk[i]);
      std::printf("\n");
    }
    RunExit r = m.run_bounded(std::chrono::milliseconds(100));
    EXPECT_EQ(r.diagnostic.find("host signal"), std::string::npos) << "round " << round << ": " << r.diagnostic;
    ++kinds[static_cast<int>(r.kind)];
    if (std::getenv("BT_SHOW_GARBAGE")) std::printf("%d: r%d %s\n", static_cast<int>(r.kind), round, r.diagnostic.substr(0, 300).c_str());
  }
  std::printf("garbage rounds: stopped %d, shutdown %d, error %d\n", kinds[0], kinds[1], kinds[2]);
}

// Task switches and call gates driven by random descriptors, TSS contents
// and IDT gates: far JMP/CALL to random selectors, INT n through random task
// gates, IRET with NT, interleaved with random bytes.  Whatever the tables
// say, the host survives and each run ends in a RunExit (a guest exception,
// a triple fault, a "not supported" error, or the stop port).
TEST(BtVm, RandomTaskSwitchesAndCallGatesNeverCrashTheHost) {
  std::mt19937 rng(std::getenv("BT_TASK_SEED") ? std::atoi(std::getenv("BT_TASK_SEED")) : 13);
  int kinds[3] = {0, 0, 0};
  for (int round = 0; round < 80; ++round) {
    Machine m;
    m.tables();
    m.load(stopper_start, stopper_start + 2, 0x180000);
    // GDT: the flat entries, then 26 random system descriptors.
    std::uint64_t gdt[32];
    std::memcpy(gdt, m.mem.host_base() + 0x1000, 6 * 8);
    for (unsigned i = 6; i < 32; ++i) {
      const std::uint32_t base = 0x10000 + (rng() % 0x40) * 0x400 + (rng() % 2 ? rng() % 0x400 : 0);
      const std::uint32_t limit = rng() % 3 ? 0x67 + rng() % 0x100 : rng() % 0x80;
      const unsigned dpl = rng() % 4, present = rng() % 8 != 0;
      const std::uint16_t sel = static_cast<std::uint16_t>((rng() % 32) << 3 | (rng() % 4));
      const std::uint32_t off = rng() % 2 ? 0x180000 : rng();
      std::uint64_t d = 0;
      switch (rng() % 5) {
        case 0: case 1: {  // TSS (32-bit mostly, 16-bit too), available or busy
          const unsigned type = (rng() % 2 ? 1 : 3) | (rng() % 4 ? 8 : 0);
          d = (limit & 0xffff) | (std::uint64_t{base & 0xffffff} << 16) |
              (std::uint64_t{type | (dpl << 5) | (present << 7)} << 40) | (std::uint64_t{base >> 24} << 56);
          break;
        }
        case 2:  // task gate
          d = (std::uint64_t{sel} << 16) | (std::uint64_t{5u | (dpl << 5) | (present << 7)} << 40);
          break;
        case 3:  // call gate (32- or 16-bit)
          d = (off & 0xffff) | (std::uint64_t{sel} << 16) | (std::uint64_t{rng() % 32} << 32) |
              (std::uint64_t{(rng() % 4 ? 0xcu : 0x4u) | (dpl << 5) | (present << 7)} << 40) |
              (std::uint64_t{off >> 16} << 48);
          break;
        default:
          d = (std::uint64_t{rng()} << 32) | rng();
      }
      gdt[i] = d;
    }
    m.mem.load(0x1000, gdt, sizeof gdt);
    m.state.gdtr = {0x1000, sizeof gdt - 1};
    // TSS contents: random, but often with plausible selectors and EIP.
    std::vector<std::uint8_t> tss(0x11000);
    for (auto& b : tss) b = static_cast<std::uint8_t>(rng());
    for (std::uint32_t at = 0; at + 0x68 <= tss.size(); at += 0x400) {
      if (rng() % 2) continue;
      const std::uint32_t eip = 0x180000, eflags = 2, cs = 0x08, ds = 0x10;
      std::memcpy(&tss[at + 0x20], &eip, 4);
      std::memcpy(&tss[at + 0x24], &eflags, 4);
      for (unsigned s = 0; s < 6; ++s) std::memcpy(&tss[at + 0x48 + 4 * s], s == 1 ? &cs : &ds, 4);
      const std::uint32_t zero = 0;
      std::memcpy(&tss[at + 0x60], &zero, 4);
    }
    m.mem.load(0x10000, tss.data(), tss.size());
    // IDT: handlers at the stopper, or task gates to random selectors.
    for (unsigned v = 0; v < 256; ++v) {
      const std::uint32_t off = 0x180000;
      std::uint64_t g = (off & 0xffff) | (0x08ull << 16) | (0x8eull << 40) | (static_cast<std::uint64_t>(off >> 16) << 48);
      if (rng() % 2) g = (std::uint64_t{(rng() % 32) << 3} << 16) | (0x85ull << 40);
      m.mem.load(0x2000 + v * 8, &g, 8);
    }
    // Code: far transfers to random selectors, INT n, IRET (NT at random), random bytes.
    std::vector<std::uint8_t> code;
    for (int i = 0; i < 16; ++i) {
      const std::uint16_t sel = static_cast<std::uint16_t>((rng() % 32) << 3 | (rng() % 4));
      switch (rng() % 5) {
        case 0: case 1:
          code.insert(code.end(), {static_cast<std::uint8_t>(rng() % 2 ? 0xea : 0x9a), 0, 0, 0, 0,
                                   static_cast<std::uint8_t>(sel), static_cast<std::uint8_t>(sel >> 8)});
          break;
        case 2:
          code.insert(code.end(), {0xcd, static_cast<std::uint8_t>(rng())});
          break;
        case 3:  // pushfd; or dword [esp], 0x4000; popfd; iretd
          code.insert(code.end(), {0x9c, 0x81, 0x0c, 0x24, 0x00, 0x40, 0x00, 0x00, 0x9d, 0xcf});
          break;
        default:
          for (int k = 0; k < 4; ++k) code.push_back(static_cast<std::uint8_t>(rng()));
      }
    }
    m.mem.load(kBase, code.data(), code.size());
    RunExit r = m.run_bounded(std::chrono::milliseconds(100));
    EXPECT_EQ(r.diagnostic.find("host signal"), std::string::npos) << "round " << round << ": " << r.diagnostic;
    ++kinds[static_cast<int>(r.kind)];
  }
  std::printf("task/gate rounds: stopped %d, shutdown %d, error %d\n", kinds[0], kinds[1], kinds[2]);
}

TEST(BtVm, KickBeforeRunStopsTheNextRun) {
  Machine m;
  m.load(spin_start, spin_end);
  m.cpu->load(m.state);
  m.cpu->kick();
  RunExit r = m.cpu->run();
  EXPECT_EQ(r.kind, ExitKind::Stopped);
  // The kick was consumed: a later run proceeds (and is kicked again).
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    m.cpu->kick();
  });
  r = m.cpu->run();
  t.join();
  EXPECT_EQ(r.kind, ExitKind::Stopped);
  EXPECT_GT(m.cpu->save().gpr[gpr::rax], 1000u);
}

BT_GUEST_PROGRAM(strops, 0x100000,
  "  cld\n"
  "  mov edi, 0x20ffc\n"        // crosses pages, 3 pages long
  "  mov ecx, 3000\n"
  "  mov eax, 0x11223344\n"
  "  rep stosd\n"
  "  mov esi, 0x20ffc\n"        // overlapping forward copy: replicates the first byte
  "  mov edi, 0x20ffd\n"
  "  mov ecx, 100\n"
  "  rep movsb\n"
  "  std\n"
  "  mov esi, 0x30003\n"        // backward copy across a page boundary
  "  mov edi, 0x40103\n"
  "  mov ecx, 4100\n"
  "  rep movsb\n"
  "  cld\n"
  "  mov eax, edi\n"
  "  out 0x80, eax\n"
  "  mov eax, ecx\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n")

TEST(BtVm, RepStringInstructionsMatchAReferenceModel) {
  Machine m;
  m.load(strops_start, strops_end);
  std::vector<std::uint8_t> ref(m.mem.size());
  for (std::uint32_t a = 0x2f000; a < 0x31000; ++a) {  // source pattern for the backward copy
    const std::uint8_t v = static_cast<std::uint8_t>(a * 7);
    m.mem.host_base()[a] = v;
  }
  std::memcpy(ref.data(), m.mem.host_base(), ref.size());
  for (std::uint32_t i = 0; i < 3000; ++i) {
    const std::uint32_t v = 0x11223344;
    std::memcpy(&ref[0x20ffc + 4 * i], &v, 4);
  }
  for (std::uint32_t i = 0; i < 100; ++i) ref[0x20ffd + i] = ref[0x20ffc + i];
  for (std::uint32_t i = 0; i < 4100; ++i) ref[0x40103 - i] = ref[0x30003 - i];
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 2u);
  EXPECT_EQ(m.plat.post[0], 0x40103u - 4100u);
  EXPECT_EQ(m.plat.post[1], 0u);
  EXPECT_EQ(std::memcmp(ref.data() + 0x20000, m.mem.host_base() + 0x20000, 0x30000), 0);
}

BT_GUEST_PROGRAM(hostbug, 0x100000, "  mov al, 1\n  out 0x99, al\n  out 0xf4, al\n")

TEST(BtVm, ASignalInMonitorCodeIsAnErrorExit) {
  Machine m;
  m.load(hostbug_start, hostbug_end);
  RunExit r = m.run();
  EXPECT_EQ(r.kind, ExitKind::Error);
  EXPECT_NE(r.diagnostic.find("host signal 11 in monitor code"), std::string::npos) << r.diagnostic;
  // The vCPU is still usable afterwards.
  m.plat.crash_target = &m.plat.exit_code;
  m.state.rip = kBase;
  r = m.run();
  EXPECT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
}

BT_GUEST_PROGRAM(far, 0x100000,
  "  ljmp 0x08, BASE + 1f - far_start\n"
  "1: lcall 0x08, BASE + farfn - far_start\n"
  "  out 0x80, eax\n"
  "  mov ax, 0x10\n"
  "  mov ds, ax\n"
  "  mov es, ax\n"
  "  push ds\n"
  "  pop fs\n"
  "  mov ax, fs\n"
  "  movzx eax, ax\n"
  "  out 0x80, eax\n"
  "  mov eax, esp\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  "farfn: mov eax, [esp+4]\n"
  "  retf\n")

TEST(BtVm, FarTransfersAndSegmentLoads) {
  Machine m;
  m.load(far_start, far_end);
  m.tables();
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 3u);
  EXPECT_EQ(m.plat.post[0], 0x08u);     // CS pushed by the far call
  EXPECT_EQ(m.plat.post[1], 0x10u);     // FS after push ds / pop fs
  EXPECT_EQ(m.plat.post[2], 0x80000u);  // stack balanced
  EXPECT_EQ(m.state.fs.selector, 0x10);
  EXPECT_TRUE(m.state.fs.present);
  EXPECT_EQ(m.state.fs.limit, 0xffffffffu);
  // The accessed bit was set in the GDT entry of 0x10.
  EXPECT_EQ((m.mem.r32(0x1000 + 0x10 + 4) >> 8) & 1, 1u);
}

// A 256 KiB translation cache and ~12000 distinct blocks: the cache is
// flushed several times while the guest runs, and it still computes the
// right answer (region maps, fast tables and pending chains are reset).
TEST(BtVm, TranslationCacheFlushesKeepTheGuestCorrect) {
  MemfdMemory mem(16u << 20);
  FakePlatform plat;
  NullLogger log;
  Vcpu cpu(mem, plat, log, 0, 256 * 1024);
  std::vector<std::uint8_t> code;
  // ecx = 3 outer rounds; then 4000 blocks "add eax, i; jmp +0"; then loop.
  code.insert(code.end(), {0xb9, 3, 0, 0, 0, 0x31, 0xc0});  // mov ecx, 3; xor eax, eax
  const std::size_t loop_top = code.size();
  std::uint64_t expect = 0;
  for (std::uint32_t i = 0; i < 4000; ++i) {
    code.push_back(0x05);  // add eax, imm32
    for (int k = 0; k < 4; ++k) code.push_back(static_cast<std::uint8_t>(i >> (8 * k)));
    code.insert(code.end(), {0xeb, 0x00});  // jmp to the next instruction: ends the block
    expect += i;
  }
  code.push_back(0x49);  // dec ecx
  const std::int32_t back = static_cast<std::int32_t>(loop_top) - static_cast<std::int32_t>(code.size() + 6);
  code.insert(code.end(), {0x0f, 0x85});  // jnz loop_top
  for (int k = 0; k < 4; ++k) code.push_back(static_cast<std::uint8_t>(static_cast<std::uint32_t>(back) >> (8 * k)));
  code.insert(code.end(), {0xe7, 0x80, 0xe6, 0xf4});  // out 0x80, eax; out 0xf4, al
  mem.load(kBase, code.data(), code.size());
  cpu.load(multiboot_state(kBase));
  RunExit r = cpu.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(plat.post.size(), 1u);
  EXPECT_EQ(plat.post[0], static_cast<std::uint32_t>(3 * expect));
  Counters c;
  cpu.add_counters(c);
  std::uint64_t flushes = 0;
  for (auto& [n, v] : c)
    if (n == "bt.cache_flushes") flushes = v;
  EXPECT_GE(flushes, 2u);
}

// Two VMs on two threads at once: per-thread GS base, poll pages, timers and
// fault handling stay separate.
TEST(BtVm, TwoVmsRunConcurrentlyOnTwoThreads) {
  for (int round = 0; round < 5; ++round) {
    Machine a, b;
    a.load(fib_start, fib_end);
    b.load(smc_start, smc_end);
    RunExit ra, rb;
    std::thread ta([&] { ra = a.run(); });
    std::thread tb([&] { rb = b.run(); });
    ta.join();
    tb.join();
    ASSERT_EQ(ra.kind, ExitKind::Stopped) << ra.diagnostic;
    ASSERT_EQ(rb.kind, ExitKind::Stopped) << rb.diagnostic;
    ASSERT_EQ(a.plat.post.size(), 2u);
    EXPECT_EQ(a.plat.post[0], 6765u);
    ASSERT_EQ(b.plat.post.size(), 3u);
    EXPECT_EQ(b.plat.post[2], 102u);
  }
}

TEST(BtVm, PlatformTimerDeadlinesArmAOneShotHostTimer) {
  Machine m;
  m.load(spin_start, spin_end);
  m.plat.deadline = 200000;  // 200 us after "now" (the fake clock stays at 0)
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    m.cpu->kick();
  });
  RunExit r = m.run();
  t.join();
  EXPECT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  EXPECT_GT(m.plat.deadline_queries, 0);
  EXPECT_GE(m.counter("bt.irq_check_exits"), 1u);
}

BT_GUEST_PROGRAM(window, 0x100000,
  "  mov eax, 1\n"
  "  sti\n"
  "  nop\n"
  ".globl window_after_sti\n"
  "window_after_sti: mov eax, 2\n"
  "  cli\n"
  "  push eax\n"
  "  mov al, 0x30\n"
  "  out 0x81, al\n"
  "  pop eax\n"
  "  push 0x202\n"
  "  popfd\n"
  ".globl window_after_popf\n"
  "window_after_popf: mov eax, 3\n"
  "  out 0xf4, al\n"
  ".globl window_h\n"
  "window_h: push eax\n"
  "  mov eax, [esp+4]\n"
  "  out 0x80, eax\n"
  "  pop eax\n"
  "  out 0x80, eax\n"
  "  iretd\n")
extern "C" const unsigned char window_after_sti[], window_after_popf[], window_h[];

// Interrupts waiting while IF=0 are taken right where inline STI (after its
// shadow) and inline POPF open the window.
TEST(BtVm, InlineStiAndPopfOpenTheInterruptWindowPrecisely) {
  Machine m;
  m.load(window_start, window_end);
  m.tables();
  m.gate(0x30, window_h, window_start);
  m.plat.irqs = {0x30};  // the second is raised by the guest (port 0x81) with IF=0
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 4u);
  EXPECT_EQ(m.plat.post[0], kBase + static_cast<std::uint32_t>(window_after_sti - window_start));
  EXPECT_EQ(m.plat.post[1], 1u);
  EXPECT_EQ(m.plat.post[2], kBase + static_cast<std::uint32_t>(window_after_popf - window_start));
  EXPECT_EQ(m.plat.post[3], 2u);
  EXPECT_EQ(m.counter("bt.irq_window_exits"), 2u);
}

// An instruction breakpoint on the instruction after STI: the #DB fault comes
// first (code breakpoints outrank nothing STI's shadow blocks, and the
// interrupt waits in the shadow), then the interrupt, on the handler's IRET,
// before that instruction runs.  STI is inline only when its shadow holds
// inside the block, which a breakpoint on the next instruction breaks.
BT_GUEST_PROGRAM(stibp, 0x100000,
  "  mov esp, 0x8000\n"
  "  call 1f\n"
  "1: pop eax\n"
  "  lea eax, [eax + stibp_next - 1b]\n"
  "  mov dr0, eax\n"
  "  mov eax, 0x1\n"                 // L0, execute, one byte
  "  mov dr7, eax\n"
  "  mov al, 0x30\n"
  "  out 0x81, al\n"                 // raised while IF=0
  "  mov eax, 7\n"
  "  sti\n"
  ".globl stibp_next\n"
  "stibp_next: mov eax, 8\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl stibp_db\n"
  "stibp_db: push eax\n"
  "  mov eax, 0xdb\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp+4]\n"
  "  out 0x80, eax\n"
  "  xor eax, eax\n"
  "  mov dr7, eax\n"
  "  mov dr6, eax\n"
  "  pop eax\n"
  "  iretd\n"
  ".globl stibp_irq\n"
  "stibp_irq: push eax\n"
  "  mov eax, 0x30\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp+4]\n"
  "  out 0x80, eax\n"
  "  pop eax\n"
  "  iretd\n")
extern "C" const unsigned char stibp_next[], stibp_db[], stibp_irq[];

TEST(BtVm, AnInstructionBreakpointInTheStiShadowComesBeforeTheInterrupt) {
  Machine m;
  m.load(stibp_start, stibp_end);
  m.tables();
  m.gate(1, stibp_db, stibp_start);
  m.gate(0x30, stibp_irq, stibp_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  const std::uint32_t next = kBase + static_cast<std::uint32_t>(stibp_next - stibp_start);
  const std::vector<std::uint32_t> expected = {0xdbu, next, 0x30u, next, 8u};
  EXPECT_EQ(m.plat.post, expected);
}

// CPUID answers from the VM's CPU model, less what the translator does not
// implement (AVX here), which set_cpu_model names; the APIC ID is the vCPU's.
BT_GUEST_PROGRAM(cpuid_model, 0x100000,
  "  xor eax, eax\n"
  "  cpuid\n"
  "  mov [0x5000], ebx\n"
  "  mov [0x5004], edx\n"
  "  mov [0x5008], ecx\n"
  "  mov eax, 1\n"
  "  cpuid\n"
  "  mov [0x500c], eax\n"
  "  mov [0x5010], ecx\n"
  "  mov [0x5014], edx\n"
  "  mov eax, 0x40000000\n"
  "  cpuid\n"
  "  mov [0x5018], ebx\n"
  "  mov al, 0\n"
  "  out 0xf4, al\n")

TEST(BtVm, CpuidAnswersFromTheVmsCpuModel) {
  Machine m;
  modevisor::api::CpuidLeaf vendor;
  vendor.eax = 1;
  std::memcpy(&vendor.ebx, "Auth", 4);
  std::memcpy(&vendor.edx, "enti", 4);
  std::memcpy(&vendor.ecx, "cAMD", 4);
  modevisor::api::CpuidLeaf basic;
  basic.function = 1;
  basic.eax = 0x00100f22;
  basic.ecx = (1u << 28) | (1u << 31);  // AVX, hypervisor
  basic.edx = (1u << 0) | (1u << 26);   // FPU, SSE2
  const auto hidden = m.cpu->set_cpu_model({vendor, basic});
  EXPECT_EQ(hidden, std::vector<std::string>{"leaf 0x1 ecx bit 28"});
  m.load(cpuid_model_start, cpuid_model_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  char name[13] = {};
  std::memcpy(name, m.mem.host_base() + 0x5000, 12);
  EXPECT_STREQ(name, "AuthenticAMD");
  EXPECT_EQ(m.mem.r32(0x500c), 0x00100f22u);
  EXPECT_EQ(m.mem.r32(0x5010), 1u << 31) << "AVX hidden";
  EXPECT_EQ(m.mem.r32(0x5014), (1u << 0) | (1u << 26));
  EXPECT_EQ(m.mem.r32(0x5018), 0u) << "no hypervisor leaves in the model";
}

// Adaptive translation: a DIV that raised #DE twice and an MMIO access are
// translated as monitor calls; every result and every #DE stays exact, and
// the DIV goes back to native translation once it stops faulting.
BT_GUEST_PROGRAM(adapt, 0x100000,
  "  xor esi, esi\n"            // #DE count (the handler)
  "  xor edi, edi\n"            // sum of quotients
  "  mov ebx, 0\n"              // iteration
  "1: mov ecx, 7\n"
  "  cmp ebx, 6\n"
  "  jae 2f\n"
  "  test ebx, 1\n"
  "  jz 2f\n"
  "  xor ecx, ecx\n"            // iterations 1, 3, 5 divide by zero
  "2: lea eax, [ebx*8+ebx+100]\n"
  "  xor edx, edx\n"
  "  div ecx\n"                 // the handler skips it (2 bytes) on #DE
  "  add edi, eax\n"
  "  inc ebx\n"
  "  cmp ebx, 300\n"
  "  jb 1b\n"
  "  mov eax, esi\n"
  "  out 0x80, eax\n"
  "  mov eax, edi\n"
  "  out 0x80, eax\n"
  "  mov eax, 0xf0000000\n"
  "  mov dword ptr [eax], 10\n"
  "  mov ecx, 50\n"
  "3: add dword ptr [eax], 3\n"
  "  loop 3b\n"
  "  mov eax, [eax]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl adapt_hde\n"
  "adapt_hde: inc esi\n"
  "  xor eax, eax\n"
  "  add dword ptr [esp], 2\n"
  "  iretd\n")
extern "C" const unsigned char adapt_hde[];

TEST(BtVm, InstructionsThatKeepFaultingBecomeMonitorCallsAndGoBack) {
  Machine m;
  m.load(adapt_start, adapt_end);
  m.tables();
  m.gate(0, adapt_hde, adapt_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  std::uint32_t sum = 0;
  for (std::uint32_t i = 0; i < 300; ++i)
    if (!(i < 6 && (i & 1))) sum += (9 * i + 100) / 7;  // a #DE leaves eax = 0 (the handler)
  ASSERT_EQ(m.plat.post.size(), 3u);
  EXPECT_EQ(m.plat.post[0], 3u);
  EXPECT_EQ(m.plat.post[1], sum);
  EXPECT_EQ(m.plat.post[2], 160u);
  EXPECT_GE(m.counter("bt.monitor_sites_marked"), 2u);    // the DIV and the MMIO add
  EXPECT_GE(m.counter("bt.monitor_sites_unmarked"), 1u);  // the DIV, after 64 clean runs
  EXPECT_EQ(m.counter("bt.exceptions_delivered"), 3u);
}

// Paging off: one hidden fault maps its whole aligned 256 KiB of RAM, and a
// code page inside such a run still traps the write that modifies it.
BT_GUEST_PROGRAM(ahead, 0x100000,
  "  mov byte ptr [0x108000], 1\n"   // maps the run around the code page
  "  xor eax, eax\n"
  "  mov ecx, 256\n"
  "  mov edx, 0x400000\n"
  "1: mov byte ptr [edx], cl\n"
  "  movzx ebx, byte ptr [edx]\n"
  "  add eax, ebx\n"
  "  add edx, 4096\n"
  "  loop 1b\n"
  "  out 0x80, eax\n"
  "  call ahead_target\n"
  "  out 0x80, eax\n"
  "  mov byte ptr [BASE + ahead_target - ahead_start + 1], 7\n"  // the immediate of mov eax, 5
  "  call ahead_target\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl ahead_target\n"
  "ahead_target: mov eax, 5\n"
  "  ret\n")

TEST(BtVm, PagingOffFillsAheadAndKeepsCodePagesTraced) {
  Machine m;
  m.load(ahead_start, ahead_end);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 3u);
  EXPECT_EQ(m.plat.post[0], 255u * 256u / 2u);  // cl = 256 stores a 0
  EXPECT_EQ(m.plat.post[1], 5u);
  EXPECT_EQ(m.plat.post[2], 7u);
  EXPECT_LT(m.counter("swmmu.hidden_faults"), 32u);  // 256 data pages in 4 runs, code, stack
  EXPECT_GE(m.counter("swmmu.prefilled_pages"), 250u);
  EXPECT_GE(m.counter("bt.smc_invalidations"), 1u);
}

// Monitor calls: int n / iretd, #DE / iretd and in, each emulated from
// translated code and continued at the next translation, give the same
// architectural results as the dispatcher; most calls never leave the cache.
BT_GUEST_PROGRAM(mcall, 0x100000,
  "  xor esi, esi\n"
  "  xor edi, edi\n"
  "  mov ebx, 1000\n"
  "1: int 0x31\n"
  "  dec ebx\n"
  "  jnz 1b\n"
  "  mov ebx, 1000\n"
  "  xor ecx, ecx\n"
  "2: mov eax, 7\n"
  "  xor edx, edx\n"
  "  div ecx\n"
  "  in al, 0x80\n"
  "  dec ebx\n"
  "  jnz 2b\n"
  "  mov eax, esi\n"
  "  out 0x80, eax\n"
  "  mov eax, edi\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  ".globl mcall_h31\n"
  "mcall_h31: inc esi\n"
  "  iretd\n"
  ".globl mcall_hde\n"
  "mcall_hde: inc edi\n"
  "  add dword ptr [esp], 2\n"
  "  iretd\n")
extern "C" const unsigned char mcall_h31[], mcall_hde[];

TEST(BtVm, MonitorCallsDeliverEventsWithoutLeavingTranslatedCode) {
  Machine m;
  m.load(mcall_start, mcall_end);
  m.tables();
  m.gate(0x31, mcall_h31, mcall_start);
  m.gate(0, mcall_hde, mcall_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 2u);
  EXPECT_EQ(m.plat.post[0], 1000u);  // every int 0x31 reached its handler once
  EXPECT_EQ(m.plat.post[1], 1000u);  // every #DE too, and resumed after the div
  EXPECT_EQ(m.state.gpr[gpr::rsp], 0x80000u);
  EXPECT_EQ(m.counter("bt.exceptions_delivered"), 1000u);
  // int+iretd, div+iretd+in per iteration; a host tick may send a few through the dispatcher.
  EXPECT_GT(m.counter("bt.monitor_calls_in_cache"), 3000u);
  EXPECT_LE(m.counter("bt.monitor_calls_in_cache"), m.counter("bt.monitor_calls"));
}
