/* smp: brings up the application processors the way an OS does (Intel MP
 * spec / SDM 8.4.4): for each AP, INIT (level assert, then de-assert),
 * 10 ms, STARTUP, 200 us, STARTUP again, through the local APIC's ICR, into a
 * real-mode trampoline below 1 MiB (smp_trampoline.S).  Each AP enters
 * protected mode, announces itself on COM1 under a spinlock and counts
 * itself online; the BSP waits for each in turn (so the transcript is
 * deterministic), then lets all APs add to one counter under a spinlock at
 * the same time, sleeps in HLT until the last one wakes it with a fixed IPI,
 * and checks the total: a lost update, a missed or extra start, a second
 * start of a running AP (the second STARTUP must be ignored) or a lost
 * IPI all show.
 *
 * cmdline: cpus=N (1..16, default 1), the number of CPUs the machine has
 * (QEMU -smp N, the VM's vcpus); n=ITERATIONS per AP (default 100000). */
#include "rt.h"
#include "smp.h"

#define MAX_CPUS 16
#define IPI_VECTOR 0x40
#define TIMEOUT_VECTOR 0x41

extern const char smp_trampoline_start[], smp_trampoline_end[];

volatile uint32_t smp_ap_stack; /* read by ap_protected_entry */
static uint8_t ap_stacks[MAX_CPUS][8192] __attribute__((aligned(16)));
static struct __attribute__((packed)) { uint16_t limit; uint32_t base; } kernel_idtr;

static volatile int print_lock, count_lock;
static volatile uint32_t online = 1; /* the BSP */
static volatile uint32_t go, done, counter, iterations, total_aps;
static volatile uint32_t ipis, timed_out;

static void spin_lock(volatile int *lock)
{
  while (__sync_lock_test_and_set(lock, 1))
    while (*lock)
      __asm__ volatile("pause");
}
static void spin_unlock(volatile int *lock) { __sync_lock_release(lock); }

/* printf under the console spinlock: every CPU prints through it. */
#define say(...) do { spin_lock(&print_lock); printf(__VA_ARGS__); spin_unlock(&print_lock); } while (0)

static uint32_t cpuid_apic_id(void)
{
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  return b >> 24;
}

/* ---- the local APIC: IPIs and its timer as a delay ---- */

static void icr_send(uint32_t apic_id, uint32_t low)
{
  lapic_write(LAPIC_ICR_HI, apic_id << 24);
  lapic_write(LAPIC_ICR_LO, low);
  while (lapic_read(LAPIC_ICR_LO) & (1u << 12)) /* delivery status: send pending */
    __asm__ volatile("pause");
}

/* Busy-wait with the APIC timer (one-shot, masked, divide by 1: 1 GHz on
 * QEMU, KVM and modevisor alike). */
static void udelay(uint32_t us)
{
  lapic_write(LAPIC_TIMER_DIV, 0xb);
  lapic_write(LAPIC_LVT_TIMER, 0x10000 | TIMEOUT_VECTOR);
  lapic_write(LAPIC_TIMER_INIT, us * 1000);
  while (lapic_read(LAPIC_TIMER_CUR) != 0)
    __asm__ volatile("pause");
  /* Stop it outright: a count that reads 0 may not have expired in the
   * device model yet (QEMU's timer callback can run later on a loaded host),
   * and a later divide change makes it count again. */
  lapic_write(LAPIC_TIMER_INIT, 0);
}

/* ---- the APs ---- */

void ap_main(void)
{
  __asm__ volatile("lidt %0" : : "m"(kernel_idtr)); /* faults are reported, not triple faults */
  lapic_enable(0xff);
  const uint32_t apic_id = lapic_read(LAPIC_ID) >> 24;
  const uint32_t bsp_flag = (uint32_t)(rdmsr(0x1b) >> 8) & 1;
  spin_lock(&print_lock);
  const uint32_t n = ++online;
  printf("AP %u: APIC ID %u, CPUID APIC ID %u, BSP flag %u, protected mode, %u CPUs online\n", apic_id, apic_id,
         cpuid_apic_id(), bsp_flag, n);
  spin_unlock(&print_lock);

  while (!go)
    __asm__ volatile("pause");
  for (uint32_t i = 0; i < iterations; i++) {
    spin_lock(&count_lock);
    const uint32_t v = counter; /* a plain read-modify-write: only the lock makes it exact */
    __asm__ volatile("pause");
    counter = v + 1;
    spin_unlock(&count_lock);
  }
  /* The last AP to finish wakes the BSP, asleep in HLT, with a fixed IPI. */
  if (__sync_fetch_and_add(&done, 1) == total_aps - 1)
    icr_send(0, IPI_VECTOR);
  for (;;)
    __asm__ volatile("cli; hlt");
}

/* ---- the BSP ---- */

static struct regs *on_ipi(struct regs *r)
{
  ipis++;
  lapic_eoi();
  return r;
}
static struct regs *on_timeout(struct regs *r)
{
  timed_out = 1;
  lapic_eoi();
  return r;
}

static uint16_t fw_cfg_cpus(void)
{
  outw(0x510, 0x0005); /* FW_CFG_NB_CPUS */
  uint16_t v = inb(0x511);
  v |= (uint16_t)inb(0x511) << 8;
  return v;
}

/* INIT-SIPI-SIPI to one AP; true once it counted itself online. */
static int start_ap(uint32_t apic_id)
{
  const uint32_t before = online;
  smp_ap_stack = (uint32_t)(ap_stacks[apic_id] + sizeof ap_stacks[apic_id]);
  icr_send(apic_id, 0xc500); /* INIT, level triggered, assert */
  icr_send(apic_id, 0x8500); /* INIT level de-assert */
  udelay(10000);
  for (int i = 0; i < 2; i++) {
    icr_send(apic_id, 0x0600 | SMP_STARTUP_VECTOR); /* STARTUP */
    udelay(200);
  }
  for (int ms = 0; ms < 5000 && online == before; ms++) /* generous: an AP needs microseconds */
    udelay(1000);
  return online == before + 1;
}

int main(void)
{
  const uint32_t cpus = (uint32_t)cmdline_ulong("cpus", 1);
  iterations = (uint32_t)cmdline_ulong("n", 100000);
  if (cpus < 1 || cpus > MAX_CPUS)
    rt_fail_now("cpus= must be 1..16");
  pic_init(0x20, 0x28); /* every 8259 input masked: only APIC interrupts below */
  lapic_enable(0xff);
  __asm__ volatile("sidt %0" : "=m"(kernel_idtr));
  isr_set(IPI_VECTOR, on_ipi);
  isr_set(TIMEOUT_VECTOR, on_timeout);

  const uint32_t fw_cpus = fw_cfg_cpus();
  say("smp: cpus=%u, fw_cfg reports %u CPUs\n", cpus, fw_cpus);
  CHECK_EQ(fw_cpus, cpus);
  say("smp: BSP: APIC ID %u, CPUID APIC ID %u, BSP flag %u\n", lapic_read(LAPIC_ID) >> 24, cpuid_apic_id(),
      (uint32_t)(rdmsr(0x1b) >> 8) & 1);
  memcpy((void *)SMP_TRAMPOLINE_BASE, smp_trampoline_start, (size_t)(smp_trampoline_end - smp_trampoline_start));
  say("smp: trampoline at 0x%x, STARTUP vector 0x%x\n", SMP_TRAMPOLINE_BASE, SMP_STARTUP_VECTOR);

  for (uint32_t id = 1; id < cpus; id++) {
    if (!start_ap(id)) {
      say("FAIL: AP %u did not come up within 5 s\n", id);
      rt_failures++;
      rt_finish();
    }
  }
  say("smp: %u CPUs online\n", online);
  CHECK_EQ(online, cpus);

  const uint32_t aps = cpus - 1;
  say("smp: %u APs add 1 to one counter %u times each, under a spinlock\n", aps, iterations);
  /* Sleep until the last AP's IPI; a one-shot APIC timer (divide by 16, ~8.6 s) ends a hang.
   * Stopped and masked while the divider changes, so no udelay leftover fires at this vector. */
  lapic_write(LAPIC_LVT_TIMER, 0x10000 | TIMEOUT_VECTOR);
  lapic_write(LAPIC_TIMER_INIT, 0);
  lapic_write(LAPIC_TIMER_DIV, 0x3);
  lapic_write(LAPIC_LVT_TIMER, TIMEOUT_VECTOR);
  lapic_write(LAPIC_TIMER_INIT, 0x20000000);
  total_aps = aps;
  go = 1;
  /* The IPI may come before the first HLT: it then waits in IRR until STI. */
  while (aps && !ipis && !timed_out)
    __asm__ volatile("sti; hlt; cli");
  lapic_write(LAPIC_TIMER_INIT, 0);
  if (timed_out)
    say("FAIL: %u of %u APs finished before the timeout\n", done, aps);
  CHECK(!timed_out);
  CHECK_EQ(done, aps);
  CHECK_EQ(ipis, aps ? 1 : 0);
  say("smp: counter = %u (expected %u)\n", counter, aps * iterations);
  CHECK_EQ(counter, aps * iterations);
  rt_finish();
}
