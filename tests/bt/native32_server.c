/* The native side of the differential bench (diff_bench.cpp): a 32-bit
 * process that runs program after program on the host CPU, so that a million
 * instruction sequences cost no million fork/execs.
 *
 * Per program, stdin: u32 code_len (0: exit), u32 out_len, code bytes, then
 * kScratchSize bytes of scratch.  The code is placed at kCode, scratch at
 * kScratch; it writes its checkpoints to [kOut, kOut + out_len) and ends with
 * "jmp dword [kReturn]".  stdout: the out area, then the scratch bytes.
 * A fault in the program kills the process; the bench sees the closed pipe.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define kCode 0x100000u
#define kCodeSize 0x40000u
#define kScratch 0x200000u
#define kScratchSize 0x4000u
#define kOut 0x210000u
#define kOutSize 0x10000u
#define kReturn 0x21fff0u
#define kStackLo 0x2f0000u

uint32_t saved_esp;
extern void native_back(void);

static int read_all(void* p, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(0, (char*)p + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static int write_all(const void* p, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = write(1, (const char*)p + done, n - done);
    if (r <= 0) return -1;
    done += (size_t)r;
  }
  return 0;
}

static int map(uint32_t at, uint32_t len, int prot) {
  return mmap((void*)at, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != MAP_FAILED;
}

int main(void) {
  if (!map(kCode, kCodeSize, PROT_READ | PROT_WRITE | PROT_EXEC) || !map(kScratch, kOut + kOutSize - kScratch,
      PROT_READ | PROT_WRITE) || !map(kStackLo, 0x10000, PROT_READ | PROT_WRITE))
    return 3;
  for (;;) {
    uint32_t len, out_len;
    if (read_all(&len, 4)) return 4;
    if (len == 0) return 0;
    if (read_all(&out_len, 4) || len > kCodeSize || out_len > kOutSize - 0x10) return 2;
    if (read_all((void*)kCode, len) || read_all((void*)kScratch, kScratchSize)) return 4;
    memset((void*)kOut, 0, out_len);
    *(uint32_t*)kReturn = (uint32_t)(uintptr_t)&native_back;
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
    if (write_all((void*)kOut, out_len) || write_all((void*)kScratch, kScratchSize)) return 5;
  }
}
