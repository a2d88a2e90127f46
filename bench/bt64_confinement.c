/* bt64_confinement: what confining a 64-bit guest address costs per memory
 * access, for the BT64 plan (plugins/bt-swmmu/DESIGN.md, "BT64: the plan").
 *
 * BT32 reaches guest memory as [r12 + zero-extended 32-bit offset]: the
 * host's 64-bit add cannot leave the 4 GiB region and its guards, so an
 * access costs nothing extra.  A 64-bit guest address cannot be confined that
 * way (the guest's 2^48 bytes do not fit the host's 2^47 of user space, once
 * per view).  The candidate measured here folds the guest's 1 GiB slots into
 * host slots through a per-view table, without touching the guest's flags
 * (which live in the host's RFLAGS while translated code runs):
 *
 *     pext  r13, ea, [mask of bits 30-47]   ; the guest slot (BMI2, no flags)
 *     mov   r13, [table + r13*8]            ; host slot base - guest slot base
 *     mov   eax, [r13 + ea]                 ; the access (a non-canonical ea,
 *                                           ; or an unmapped slot, faults)
 *
 * against BT32's form and against a QEMU-style soft TLB probe (tag compare
 * and branch, flags saved around it).  Each loop does the same dependent
 * chain of loads through a buffer, so the difference is the sequence's cost
 * on the critical path.  Prints TSC ticks per access and the ratios.
 *
 *   usage: bt64_confinement [accesses (default 20000000)]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <x86intrin.h>

#define BUF_BYTES (1u << 14)  /* 16 KiB of links: L1-resident, so the sequence, not the cache, is measured */
#define SLOT_SHIFT 30

static uint64_t best_of(uint64_t (*run)(void*, uint64_t, uint64_t), void* arg, uint64_t start, uint64_t n) {
  uint64_t best = UINT64_MAX;
  for (int trial = 0; trial < 11; ++trial) {
    const uint64_t t = run(arg, start, n);
    if (t < best) best = t;
  }
  return best;
}

/* BT32: [base + offset]; the links are offsets from the buffer. */
static uint64_t run_bt32(void* buf, uint64_t start, uint64_t n) {
  uint64_t off = start;
  const uint64_t t0 = __rdtsc();
  for (uint64_t i = 0; i < n; ++i) {
    __asm__ volatile("mov (%1,%0), %k0" : "+r"(off) : "r"(buf) : "memory");
  }
  const uint64_t t = __rdtsc() - t0;
  if (off == 1) puts("");  /* keep the chain live */
  return t;
}

struct folded {
  uint64_t* table; /* 2^18 entries: host slot base - guest slot base */
  uint64_t mask;   /* bits 30-47 */
};

/* Folded slots: the links are guest linear addresses in a slot far up the
 * canonical space (a kernel's direct map). */
static uint64_t run_folded(void* arg, uint64_t start, uint64_t n) {
  const struct folded* f = arg;
  uint64_t la = start, slot;
  const uint64_t t0 = __rdtsc();
  for (uint64_t i = 0; i < n; ++i) {
    __asm__ volatile(
        "pext %3, %0, %1\n\t"
        "mov (%2,%1,8), %1\n\t"
        "mov (%1,%0), %0"
        : "+r"(la), "=&r"(slot)
        : "r"(f->table), "r"(f->mask)
        : "memory");
  }
  const uint64_t t = __rdtsc() - t0;
  if (la == 1) puts("");
  return t;
}

/* The same without PEXT (microcoded and slow on AMD before Zen 3): RORX
 * brings bits 30-45 down, MOVZX keeps them (neither touches the flags).  Bits
 * 46-47 are not in the index, so the table's 2^16 entries alias guest slots
 * 2^46 apart: the host must reserve (never map) the windows 2^46 below and
 * above its slot window, so an aliased address faults there. */
static uint64_t run_folded_rorx(void* arg, uint64_t start, uint64_t n) {
  const struct folded* f = arg;
  uint64_t la = start, slot;
  const uint64_t t0 = __rdtsc();
  for (uint64_t i = 0; i < n; ++i) {
    __asm__ volatile(
        "rorx $30, %0, %1\n\t"
        "movzwl %w1, %k1\n\t"
        "mov (%2,%1,8), %1\n\t"
        "mov (%1,%0), %0"
        : "+r"(la), "=&r"(slot)
        : "r"(f->table)
        : "memory");
  }
  const uint64_t t = __rdtsc() - t0;
  if (la == 1) puts("");
  return t;
}

struct soft_tlb {
  uint64_t (*entries)[2]; /* 256 entries: {guest page, host page - guest page} */
};

/* A soft TLB probe (QEMU's shape): index by page number, compare the tag,
 * branch to a miss path; the guest flags are saved and restored around the
 * compare (LAHF/SAHF and SETO would do in a translator; PUSHF/POPF here is
 * the conservative form, so the miss path is never taken). */
static uint64_t run_soft_tlb(void* arg, uint64_t start, uint64_t n) {
  const struct soft_tlb* s = arg;
  uint64_t la = start, idx, tag;
  const uint64_t t0 = __rdtsc();
  for (uint64_t i = 0; i < n; ++i) {
    __asm__ volatile(
        "lahf\n\t"
        "mov %0, %1\n\t"
        "shr $12, %1\n\t"
        "movzbl %b1, %k1\n\t"
        "shl $4, %1\n\t"
        "add %3, %1\n\t"
        "mov %0, %2\n\t"
        "and $-4096, %2\n\t"
        "cmp (%1), %2\n\t"
        "jne 1f\n\t"
        "sahf\n\t"
        "add 8(%1), %0\n\t"
        "mov (%0), %0\n\t"
        "jmp 2f\n"
        "1: ud2\n"
        "2:"
        : "+r"(la), "=&r"(idx), "=&r"(tag)
        : "r"(s->entries)
        : "rax", "cc", "memory");
  }
  const uint64_t t = __rdtsc() - t0;
  if (la == 1) puts("");
  return t;
}

int main(int argc, char** argv) {
  const uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 0) : 20000000ull;
  uint8_t* buf = mmap(NULL, BUF_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) return perror("mmap"), 1;
  /* One random cycle through the buffer's 64-byte lines. */
  const uint32_t lines = BUF_BYTES / 64;
  uint32_t* order = malloc(lines * sizeof *order);
  for (uint32_t i = 0; i < lines; ++i) order[i] = i;
  srand(1);
  for (uint32_t i = lines - 1; i > 0; --i) {
    const uint32_t j = (uint32_t)rand() % (i + 1);
    const uint32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  /* The guest's slot: 0xffff888000000000 (Linux's direct map), bits 30-47 = 0x22200. */
  const uint64_t guest_base = 0xffff888000000000ull;
  struct folded f = {calloc(1u << 18, sizeof(uint64_t)), 0x0000ffffc0000000ull};
  const uint64_t gslot = (guest_base >> SLOT_SHIFT) & 0x3ffff;
  f.table[gslot] = (uint64_t)(uintptr_t)buf - guest_base;
  f.table[gslot & 0xffff] = (uint64_t)(uintptr_t)buf - guest_base;  /* RORX/MOVZX's index */
  struct soft_tlb s = {calloc(256, 2 * sizeof(uint64_t))};
  for (uint32_t p = 0; p < BUF_BYTES / 4096; ++p) {
    const uint64_t gpage = guest_base + (uint64_t)p * 4096;
    const uint32_t i = (uint32_t)(gpage >> 12) & 0xff;
    s.entries[i][0] = gpage;
    s.entries[i][1] = (uint64_t)(uintptr_t)buf - guest_base;
  }

  /* BT32 links: 32-bit offsets. */
  for (uint32_t i = 0; i < lines; ++i) *(uint32_t*)(buf + order[i] * 64ull) = order[(i + 1) % lines] * 64u;
  const uint64_t t32 = best_of(run_bt32, buf, order[0] * 64ull, n);
  /* 64-bit links: guest linear addresses in the direct map's slot. */
  for (uint32_t i = 0; i < lines; ++i)
    *(uint64_t*)(buf + order[i] * 64ull) = guest_base + order[(i + 1) % lines] * 64ull;
  const uint64_t tf = best_of(run_folded, &f, guest_base + order[0] * 64ull, n / 4);
  const uint64_t tr = best_of(run_folded_rorx, &f, guest_base + order[0] * 64ull, n / 4);
  const uint64_t ts = best_of(run_soft_tlb, &s, guest_base + order[0] * 64ull, n / 4);
  printf("bt64_confinement: %llu dependent loads per trial, best of 11, TSC ticks per access\n",
         (unsigned long long)n);
  printf("  BT32 [base + offset]             %6.2f\n", (double)t32 / n);
  printf("  folded slots (PEXT, table, load) %6.2f  (%.2fx BT32)\n", (double)tf / (n / 4),
         ((double)tf / (n / 4)) / ((double)t32 / n));
  printf("  folded slots (RORX, MOVZX, table) %5.2f  (%.2fx BT32)\n", (double)tr / (n / 4),
         ((double)tr / (n / 4)) / ((double)t32 / n));
  printf("  soft TLB (tag compare, LAHF/SAHF) %5.2f  (%.2fx BT32)\n", (double)ts / (n / 4),
         ((double)ts / (n / 4)) / ((double)t32 / n));
  return 0;
}
