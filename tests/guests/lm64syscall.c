/* lm64syscall: SYSCALL/SYSRET between a 64-bit kernel and a 64-bit ring-3
 * program (EFER.SCE, STAR, LSTAR, SFMASK masking RFLAGS, RCX/R11), SWAPGS
 * with KERNEL_GS_BASE, FS and GS bases written as MSRs, int $0x80 and the
 * PIT's IRQ0 from ring 3 onto the TSS's RSP0 stack with SS null, SYSRET to
 * 32-bit ring 3 (compatibility mode), and faults from ring 3 (#GP(0) for CLI,
 * #PF(5) for a supervisor page).  Expected output recorded from
 * qemu-system-x86_64 (-cpu qemu64). */
#include "lm64.h"

extern char sys_entry[], sys_run_user[], user_main[], user_int80_after[], user_cli[], user_cli_at[];
extern char user_read_super[], user_read_super_at[], user_spin[], sys_run_user32[], user32_main[], user32_int81_after[];
extern volatile uint64_t sys_kflags, sys_uflags, sys_gs_base, sys_kernel_gs_base, sys_exit_code;
extern volatile uint64_t sys_out_len, u_fs, u_gs, u_sum, u_rcx_ok, u_r11, u_flags_after, u_rsp, u32_value;
extern char sys_out[];

#define SFMASK (EFL_TF | EFL_IF | EFL_DF | 0x40000u /* AC */ | 0x3000u /* IOPL */ | 0x4000u /* NT */)

/* The kernel's per-CPU area (GS while in the kernel) and the user's GS and FS areas. */
static struct { uint64_t tag, kstack, user_rsp; } pcpu;
static uint64_t user_gs_area[2] = { 0x5553455247534153ull }, user_fs_area[2] = { 0x55534552465341ull };
static uint8_t kstack[8192] __attribute__((aligned(16)));

static void set_bases(void)
{
  wrmsr(MSR_GS_BASE, (uint32_t)&pcpu);
  wrmsr(MSR_KERNEL_GS_BASE, (uint32_t)user_gs_area);
  wrmsr(MSR_FS_BASE, (uint32_t)user_fs_area);
}

static void test_syscall(void)
{
  wrmsr(MSR_STAR, (uint64_t)(LM64_UCODE32 & ~3) << 48 | (uint64_t)LM64_KCODE64 << 32);
  wrmsr(MSR_LSTAR, (uint32_t)sys_entry);
  wrmsr(MSR_SFMASK, SFMASK);
  pcpu.tag = 0x4b45524e454c4753ull;
  pcpu.kstack = (uint32_t)(kstack + sizeof kstack);
  set_bases();
  printf("FS_BASE/GS_BASE/KERNEL_GS_BASE read back: %s\n",
         rdmsr(MSR_FS_BASE) == (uint32_t)user_fs_area && rdmsr(MSR_GS_BASE) == (uint32_t)&pcpu &&
                 rdmsr(MSR_KERNEL_GS_BASE) == (uint32_t)user_gs_area
             ? "as written" : "different");
  lm64_gate(0x80, 3, 0);
  lm64_action[0x80] = LM64_RESUME;

  int v = lm64_try(sys_run_user, (uint32_t)user_main);
  printf("ring 3 ran and called exit(%llu): lm64_try %d\n", sys_exit_code, v);
  CHECK_EQ(v, -1);
  CHECK_EQ(sys_exit_code, 7);
  sys_out[sys_out_len < 255 ? sys_out_len : 255] = 0;
  printf("ring 3 wrote: %s", sys_out);
  printf("ring 3 read %%fs:0 = %llx, %%gs:0 = %llx\n", u_fs, u_gs);
  CHECK_EQ(u_fs, user_fs_area[0]);
  CHECK_EQ(u_gs, user_gs_area[0]);
  printf("syscall add: %llx, RCX = the RIP after syscall: %s, R11 = RFLAGS %llx\n", u_sum,
         u_rcx_ok ? "yes" : "no", u_r11);
  CHECK_EQ(u_sum, 0x3333333333333333ull);
  CHECK(u_rcx_ok);
  /* The SYS_FLAGS call: R11 had the user's DF/AC/CF; the kernel ran with
   * SFMASK's bits clear.  Its other bits are not printed: QEMU 7.2 clears the
   * arithmetic flags too (the SDM keeps them: RFLAGS AND NOT SFMASK). */
  printf("user RFLAGS at syscall (R11): %llx; kernel RFLAGS & SFMASK %llx: %llx; user RFLAGS after sysret: %llx\n",
         sys_uflags, (uint64_t)SFMASK, sys_kflags & SFMASK, u_flags_after);
  CHECK_EQ(sys_kflags & SFMASK, 0);
  CHECK_EQ(sys_uflags & 0x40401, 0x40401);
  CHECK_EQ(u_flags_after, sys_uflags);
  printf("in the kernel after swapgs: GS_BASE = the per-CPU area %s, KERNEL_GS_BASE = the user's %s\n",
         sys_gs_base == (uint32_t)&pcpu ? "yes" : "no", sys_kernel_gs_base == (uint32_t)user_gs_area ? "yes" : "no");
  CHECK_EQ(sys_gs_base, (uint32_t)&pcpu);
  CHECK_EQ(sys_kernel_gs_base, (uint32_t)user_gs_area);

  uint64_t rsp0 = lm64_tss.rsp[0];
  printf("int $0x80 from ring 3: vector 0x%llx, CS 0x%llx, SS:RSP 0x%llx:%s, RIP after it %s, frame at the top of "
         "RSP0 %s, handler SS 0x%llx\n",
         lm64_last.vec, lm64_last.cs, lm64_last.ss, lm64_last.rsp == u_rsp ? "the user's" : "other",
         lm64_last.rip == (uint32_t)user_int80_after ? "yes" : "no", lm64_last.frame_at == rsp0 - 40 ? "yes" : "no",
         lm64_last.handler_ss);
  CHECK_EQ(lm64_last.vec, 0x80);
  CHECK_EQ(lm64_last.cs, LM64_UCODE64);
  CHECK_EQ(lm64_last.ss, LM64_UDATA);
  CHECK_EQ(lm64_last.rsp, u_rsp);
  CHECK_EQ(lm64_last.frame_at, rsp0 - 40);
  CHECK_EQ(lm64_last.handler_ss, 0);
  printf("after exit: GS_BASE the per-CPU area %s, KERNEL_GS_BASE the user's %s\n",
         rdmsr(MSR_GS_BASE) == (uint32_t)&pcpu ? "yes" : "no",
         rdmsr(MSR_KERNEL_GS_BASE) == (uint32_t)user_gs_area ? "yes" : "no");
  CHECK_EQ(rdmsr(MSR_GS_BASE), (uint32_t)&pcpu);
  CHECK_EQ(rdmsr(MSR_KERNEL_GS_BASE), (uint32_t)user_gs_area);
}

static void user_fault(const char *what, void *fn, const void *at, int vec, uint32_t err)
{
  set_bases();
  int v = lm64_try(sys_run_user, (uint32_t)fn);
  printf("%s: vector %d error 0x%llx, CS 0x%llx, SS:RSP 0x%llx:%s, RIP %s, frame at the top of RSP0 %s\n", what, v,
         lm64_last.err, lm64_last.cs, lm64_last.ss, lm64_last.rsp == u_rsp ? "the user's" : "other",
         lm64_last.rip == (uint32_t)at ? "at it" : "elsewhere",
         lm64_last.frame_at == lm64_tss.rsp[0] - 40 ? "yes" : "no");
  CHECK_EQ(v, vec);
  CHECK_EQ(lm64_last.err, err);
  CHECK_EQ(lm64_last.cs, LM64_UCODE64);
  CHECK_EQ(lm64_last.rip, (uint32_t)at);
  CHECK_EQ(lm64_last.frame_at, lm64_tss.rsp[0] - 40);
}

/* The PIT's IRQ0 while ring 3 spins: the frame on RSP0, as for int $0x80. */
static void test_irq_in_ring3(void)
{
  set_bases();
  lm64_action[0x20] = LM64_IRQ;
  pit_periodic(1000);
  pic_unmask(0);
  int v = lm64_try(sys_run_user, (uint32_t)user_spin);
  pic_mask_all();
  printf("IRQ0 x3 in ring 3: exit(%llu), last vector 0x%llx, CS 0x%llx, SS 0x%llx, frame at the top of RSP0 %s, "
         "handler SS 0x%llx\n",
         sys_exit_code, lm64_last.vec, lm64_last.cs, lm64_last.ss,
         lm64_last.frame_at == lm64_tss.rsp[0] - 40 ? "yes" : "no", lm64_last.handler_ss);
  CHECK_EQ(v, -1);
  CHECK_EQ(sys_exit_code, 3);
  CHECK_EQ(lm64_last.vec, 0x20);
  CHECK_EQ(lm64_last.cs, LM64_UCODE64);
  CHECK_EQ(lm64_last.ss, LM64_UDATA);
  CHECK_EQ(lm64_last.frame_at, lm64_tss.rsp[0] - 40);
  CHECK_EQ(lm64_last.handler_ss, 0);
}

/* SYSRET without REX.W: 32-bit ring 3 (compatibility mode, CS 0x2b). */
static void test_sysret32(void)
{
  set_bases();
  lm64_gate(0x81, 3, 0);
  int v = lm64_try(sys_run_user32, (uint32_t)user32_main);
  printf("sysretl to 32-bit ring 3: inc %%eax gave %llu; int $0x81 from it: vector %d, CS 0x%llx, SS:RSP "
         "0x%llx:%s, RIP after it %s, frame at the top of RSP0 %s\n",
         u32_value, v, lm64_last.cs, lm64_last.ss, lm64_last.rsp == u_rsp ? "the user's" : "other",
         lm64_last.rip == (uint32_t)user32_int81_after ? "yes" : "no",
         lm64_last.frame_at == lm64_tss.rsp[0] - 40 ? "yes" : "no");
  CHECK_EQ(u32_value, 42);
  CHECK_EQ(v, 0x81);
  CHECK_EQ(lm64_last.cs, LM64_UCODE32);
  CHECK_EQ(lm64_last.ss, LM64_UDATA);
  CHECK_EQ(lm64_last.rsp, u_rsp);
  CHECK_EQ(lm64_last.rip, (uint32_t)user32_int81_after);
  CHECK_EQ(lm64_last.frame_at, lm64_tss.rsp[0] - 40);
}

int main(void)
{
  printf("lm64syscall: syscall/sysret, swapgs, FS/GS bases, ring 3 -> 0\n");
  pic_init(0x20, 0x28); /* all masked: ring 3 runs with IF set */
  lm64_init(0);
  /* Checked (and EFER.SCE set) only now: modevisor's BT32 hides SYSCALL (it
   * runs no 64-bit code), and its output up to "entering long mode" must be QEMU's. */
  uint32_t a, b, c, d;
  cpuid(0x80000001, 0, &a, &b, &c, &d);
  if (!(d & (1u << 11))) rt_fail_now("CPUID offers no SYSCALL");
  printf("CPUID: SYSCALL offered\n");
  wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SCE);
  printf("EFER.SCE=%u\n", (unsigned)rdmsr(MSR_EFER) & 1);
  /* 1 GiB - 2 MiB: a supervisor-only 2 MiB page. */
  lm64_pd[511] &= ~PTE_U;
  write_cr3(read_cr3());
  test_syscall();
  test_irq_in_ring3();
  test_sysret32();
  user_fault("ring 3 cli", user_cli, user_cli_at, 13, 0);
  user_fault("ring 3 read of a supervisor page", user_read_super, user_read_super_at, 14, 5);
  printf("  CR2 0x%llx\n", lm64_last.cr2);
  CHECK_EQ(lm64_last.cr2, 0x3fe00010);
  rt_finish();
}
