/* unassigned: physical addresses nothing claims (above RAM, below the PCI
 * devices) give one fixed value on reads and ignore writes, for every kind of
 * access: plain loads and stores of each size, the stack (pop, push, leave
 * with ESP/EBP above RAM), SSE and x87 widths, bit tests with register
 * offsets, cmpxchg8b, read-modify-write ALU instructions and string
 * instructions; the guest goes on.
 *
 * The value differs by machine: a PC's bus (and modevisor's platform) reads
 * all ones, QEMU 7.2's pc machine reads zeros.  So the guest learns it from
 * its first byte read and checks that every access agrees with it; the
 * transcript is the same either way.  Interrupts stay off while the stack is
 * above RAM.
 *
 * Built twice: `unassigned` without and `unassigned_wide` with the SSE and
 * x87 accesses (UNASSIGNED_WIDE), which KVM's in-kernel instruction
 * emulator cannot do on MMIO (KVM_EXIT_INTERNAL_ERROR), so the HV modes run
 * only the first. */
#include "rt.h"

static uint32_t HOLE = 0x20000000u; /* 512 MiB: above the 128 MiB of RAM, below the PCI BARs */

#ifdef UNASSIGNED_WIDE
static void enable_sse(void)
{
  uint32_t cr4;
  __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
  cr4 |= (1u << 9) | (1u << 10); /* OSFXSR, OSXMMEXCPT */
  __asm__ volatile("mov %0, %%cr4" ::"r"(cr4));
  uint32_t cr0;
  __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
  cr0 &= ~(1u << 2); /* EM off */
  cr0 |= 1u << 1;    /* MP */
  __asm__ volatile("mov %0, %%cr0" ::"r"(cr0));
}
#endif

int main(void)
{
  HOLE = (uint32_t)cmdline_ulong("hole", HOLE);
  volatile uint8_t *b = (volatile uint8_t *)HOLE;
  volatile uint16_t *w = (volatile uint16_t *)(HOLE + 0x10);
  volatile uint32_t *d = (volatile uint32_t *)(HOLE + 0x20);

  /* The bus's value for nothing: all zeros or all ones, the same everywhere. */
  const uint8_t fill8 = *b;
  CHECK(fill8 == 0x00 || fill8 == 0xff);
  const uint32_t fill = fill8 ? 0xffffffffu : 0;
  printf("unassigned memory reads one fixed value: %s\n", fill8 == 0x00 || fill8 == 0xff ? "yes" : "no");

  /* Loads and stores. */
  CHECK_EQ(*w, fill & 0xffff);
  CHECK_EQ(*d, fill);
  *d = 0x12345678;
  CHECK_EQ(*d, fill);
  printf("loads of each size agree, a store is dropped\n");

  /* The stack above RAM. */
  uint32_t popped, pushed_back, esp_after, leave_ebp, leave_esp;
  __asm__ volatile(
      "mov %%esp, %%esi\n\t"
      "mov %[top], %%esp\n\t"
      "pop %[popped]\n\t"
      "push $0x1234\n\t"
      "pop %[pushed]\n\t"
      "mov %%esp, %[esp_after]\n\t"
      "mov %%esi, %%esp\n\t"
      : [popped] "=&r"(popped), [pushed] "=&r"(pushed_back), [esp_after] "=&r"(esp_after)
      : [top] "r"(HOLE + 0x1000)
      : "esi", "memory");
  CHECK_EQ(popped, fill);
  CHECK_EQ(pushed_back, fill);
  CHECK_EQ(esp_after, HOLE + 0x1004);
  __asm__ volatile(
      "push %%ebp\n\t"
      "mov %%esp, %%esi\n\t"
      "mov %[frame], %%ebp\n\t"
      "leave\n\t"
      "mov %%ebp, %[ebp]\n\t"
      "mov %%esp, %[esp]\n\t"
      "mov %%esi, %%esp\n\t"
      "pop %%ebp\n\t"
      : [ebp] "=&r"(leave_ebp), [esp] "=&r"(leave_esp)
      : [frame] "r"(HOLE + 0x2000)
      : "esi", "memory");
  CHECK_EQ(leave_ebp, fill);
  CHECK_EQ(leave_esp, HOLE + 0x2004);
  printf("pop, push and leave with the stack above RAM: esp %x, then %x\n", esp_after - HOLE, leave_esp - HOLE);

#ifdef UNASSIGNED_WIDE
  /* SSE and x87 widths. */
  enable_sse();
  uint32_t v[4];
  __asm__ volatile("movdqu %1, %%xmm0\n\tmovdqu %%xmm0, %0" : "=m"(v) : "m"(*(volatile uint32_t(*)[4])(HOLE + 0x40)));
  for (int i = 0; i < 4; i++) CHECK_EQ(v[i], fill);
  __asm__ volatile("pcmpeqb %%xmm1, %%xmm1\n\tpsrldq $8, %%xmm1\n\tmovdqu %%xmm1, %0" : "=m"(*(volatile uint32_t(*)[4])(HOLE + 0x40)));
  uint32_t pair[2] = {1, 2};
  __asm__ volatile("movq %1, %%xmm2\n\tmovq %%xmm2, %0" : "=m"(pair) : "m"(*(volatile uint64_t *)(HOLE + 0x68)));
  CHECK_EQ(pair[0], fill);
  CHECK_EQ(pair[1], fill);
  uint32_t float_bits = 1;
  __asm__ volatile("flds %1\n\tfstps %0" : "=m"(float_bits) : "m"(*(volatile uint32_t *)(HOLE + 0x60)));
  CHECK_EQ(float_bits, fill);
  __asm__ volatile("fninit");
  printf("movdqu, movq and fld/fstp agree\n");
#endif

  /* Bit tests with register offsets, cmpxchg8b, read-modify-write. */
  uint8_t cf;
  int32_t offset = -4096;
  __asm__ volatile("btsl %2, %1\n\tsetc %0" : "=q"(cf), "+m"(*(volatile uint32_t *)(HOLE + 0x800)) : "r"(offset) : "cc");
  CHECK_EQ(cf, fill & 1);
  offset = 12345;
  __asm__ volatile("btrl %2, %1\n\tsetc %0" : "=q"(cf), "+m"(*(volatile uint32_t *)(HOLE + 0x800)) : "r"(offset) : "cc");
  CHECK_EQ(cf, fill & 1);
  uint32_t lo = fill, hi = fill;
  uint8_t zf;
  __asm__ volatile("cmpxchg8b %2\n\tsetz %3"
                   : "+a"(lo), "+d"(hi), "+m"(*(volatile uint64_t *)(HOLE + 0x100)), "=q"(zf)
                   : "b"(1), "c"(2)
                   : "cc");
  CHECK_EQ(zf, 1);
  CHECK_EQ(*(volatile uint32_t *)(HOLE + 0x100), fill);
  uint32_t sum = 5;
  __asm__ volatile("addl %1, %0" : "+r"(sum) : "m"(*(volatile uint32_t *)(HOLE + 0x200)) : "cc");
  __asm__ volatile("addl $1, %0" : "+m"(*(volatile uint32_t *)(HOLE + 0x200)) :: "cc");
  CHECK_EQ(sum, 5 + fill);
  CHECK_EQ(*(volatile uint32_t *)(HOLE + 0x200), fill);
  printf("bts/btr with register offsets, cmpxchg8b and add agree\n");

  /* String instructions from the hole into RAM. */
  uint32_t copy[4] = {1, 2, 3, 4};
  uint32_t *dst = copy;
  const volatile uint32_t *src = (const volatile uint32_t *)(HOLE + 0x300);
  uint32_t count = 4;
  __asm__ volatile("cld\n\trep movsl" : "+D"(dst), "+S"(src), "+c"(count) :: "memory");
  for (int i = 0; i < 4; i++) CHECK_EQ(copy[i], fill);
  printf("rep movsd agrees\n");

  rt_finish();
}
