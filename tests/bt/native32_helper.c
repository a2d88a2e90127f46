/* Runs a 32-bit x86 program natively for the differential tests.
 *
 * stdin:  u32 code_len, code bytes, then kScratchSize bytes of scratch.
 * The code is placed at 0x100000, scratch at 0x200000, a stack page below
 * 0x300000.  The program ends with "jmp dword [0x210040]", having stored
 * EAX..EDI at 0x210000 and EFLAGS at 0x210020 (the test generates that
 * epilogue).  stdout: the 8 registers, EFLAGS, then the scratch bytes.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define kCode 0x100000u
#define kScratch 0x200000u
#define kScratchSize 0x4000u
#define kOut 0x210000u
#define kStackLo 0x2f0000u

uint32_t saved_esp;

static int read_all(void* p, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(0, (char*)p + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static void* map(uint32_t at, uint32_t len, int prot) {
  void* p = mmap((void*)at, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

extern void native_back(void);

int main(void) {
  uint32_t len;
  if (read_all(&len, 4) || len > 0x10000) return 2;
  if (!map(kCode, 0x10000, PROT_READ | PROT_WRITE | PROT_EXEC) || !map(kScratch, 0x11000, PROT_READ | PROT_WRITE) ||
      !map(kStackLo, 0x10000, PROT_READ | PROT_WRITE))
    return 3;
  if (read_all((void*)kCode, len) || read_all((void*)kScratch, kScratchSize)) return 4;
  *(uint32_t*)(kOut + 0x40) = (uint32_t)(uintptr_t)&native_back;
  __asm__ volatile(
      "pushal\n\t"
      "pushfl\n\t"
      "movl %%esp, saved_esp\n\t"
      "movl $0x100000, %%eax\n\t"
      "jmp *%%eax\n\t"
      ".globl native_back\n"
      "native_back:\n\t"
      "movl saved_esp, %%esp\n\t"
      "popfl\n\t"
      "popal\n\t" ::: "memory", "cc");
  fwrite((void*)kOut, 4, 9, stdout);
  fwrite((void*)kScratch, 1, kScratchSize, stdout);
  return 0;
}
