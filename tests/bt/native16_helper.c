/* Runs a 16-bit x86 program natively for the 16-bit differential tests, in a
 * 16-bit code segment of this process's LDT (modify_ldt).
 *
 * stdin:  u32 code_len, code bytes, then kDataSize bytes of data.
 * The code is placed at kCode and runs with CS = a 16-bit code segment based
 * there (IP 0); DS = ES = SS = a 16-bit data segment based at kData (limit
 * 0xffff), FS based at kData + 0x8000, GS at kData + 0x10000 (the data area
 * is 128 KiB, so every 16-bit offset of every segment lies inside it).  The
 * program ends by restoring this process's selectors from CS:0xfff8 (DS, ES,
 * SS), CS:0xfffa (FS), CS:0xfffc (GS) and jumping far through CS:0xfff0 back
 * here (the test generates that epilogue).  stdout: the data area.  A
 * fault in the program (e.g. an access straddling a segment limit): exit
 * status 9, "signal S trap T at IP X" on stderr.
 */
#define _GNU_SOURCE
#include <asm/ldt.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <ucontext.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define kCode 0x100000u
#define kData 0x200000u
#define kDataSize 0x20000u

/* LDT entries 0..3 at RPL 3: CS, DS/ES/SS, FS, GS. */
#define kSelCode 0x07
#define kSelData 0x0f
#define kSelFs 0x17
#define kSelGs 0x1f

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

static int ldt_entry(unsigned n, uint32_t base, int code) {
  struct user_desc d;
  memset(&d, 0, sizeof d);
  d.entry_number = n;
  d.base_addr = base;
  d.limit = 0xffff;
  d.seg_32bit = 0;
  d.contents = code ? MODIFY_LDT_CONTENTS_CODE : MODIFY_LDT_CONTENTS_DATA;
  d.useable = 1;
  return syscall(SYS_modify_ldt, 1, &d, sizeof d) == 0 ? 0 : -1;
}

extern void native16_back(void);

/* A fault in the program (a segment-limit #GP/#SS, ...): its IP and trap
 * number on stderr, exit status 9. */
static void on_fault(int sig, siginfo_t* si, void* uc_) {
  (void)si;
  /* No libc here: GS may still be a 16-bit data segment, not the TLS one. */
  const ucontext_t* uc = uc_;
  const unsigned v[3] = {(unsigned)sig, (unsigned)uc->uc_mcontext.gregs[REG_TRAPNO],
                         (unsigned)uc->uc_mcontext.gregs[REG_EIP]};
  static const char* const words[3] = {"signal 0x", " trap 0x", " at IP 0x"};
  char msg[64];
  unsigned n = 0;
  for (int k = 0; k < 3; ++k) {
    for (const char* w = words[k]; *w; ++w) msg[n++] = *w;
    for (int d = 28; d >= 0; d -= 4) msg[n++] = "0123456789abcdef"[(v[k] >> d) & 0xf];
  }
  msg[n++] = '\n';
  long ret;
  __asm__ volatile("int $0x80" : "=a"(ret) : "a"(4), "b"(2), "c"(msg), "d"(n) : "memory");
  __asm__ volatile("int $0x80" : : "a"(1), "b"(9));
  for (;;) {
  }
}

int main(void) {
  uint32_t len;
  if (read_all(&len, 4) || len > 0xff00) return 2;
  if (mmap((void*)kCode, 0x10000, PROT_READ | PROT_WRITE | PROT_EXEC,
           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == MAP_FAILED ||
      mmap((void*)kData, kDataSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
           0) == MAP_FAILED)
    return 3;
  if (read_all((void*)kCode, len) || read_all((void*)kData, kDataSize)) return 4;
  static uint8_t alt_stack[65536];
  stack_t ss = {.ss_sp = alt_stack, .ss_size = sizeof alt_stack, .ss_flags = 0};
  sigaltstack(&ss, NULL);  /* the program's stack is a 16-bit segment */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, NULL);
  sigaction(SIGBUS, &sa, NULL);
  if (ldt_entry(0, kCode, 1) || ldt_entry(1, kData, 0) || ldt_entry(2, kData + 0x8000, 0) ||
      ldt_entry(3, kData + 0x10000, 0))
    return 5;
  uint16_t ds, fs, gs, cs;
  __asm__ volatile("movw %%ds, %0\n\tmovw %%fs, %1\n\tmovw %%gs, %2\n\tmovw %%cs, %3"
                   : "=r"(ds), "=r"(fs), "=r"(gs), "=r"(cs));
  uint8_t* tail = (uint8_t*)kCode + 0xfff0;
  const uint32_t back = (uint32_t)(uintptr_t)&native16_back;
  memcpy(tail, &back, 4);
  memcpy(tail + 4, &cs, 2);
  memcpy(tail + 8, &ds, 2);
  memcpy(tail + 10, &fs, 2);
  memcpy(tail + 12, &gs, 2);
  __asm__ volatile(
      "pushal\n\t"
      "pushfl\n\t"
      "movl %%esp, saved_esp\n\t"
      "movw $0x0f, %%ax\n\t"
      "movw %%ax, %%es\n\t"
      "movw $0x17, %%ax\n\t"
      "movw %%ax, %%fs\n\t"
      "movw $0x1f, %%ax\n\t"
      "movw %%ax, %%gs\n\t"
      "movw $0x0f, %%ax\n\t"
      "movw %%ax, %%ss\n\t"
      "movw %%ax, %%ds\n\t"
      "ljmp $0x07, $0\n\t"
      ".globl native16_back\n"
      "native16_back:\n\t"
      "movl saved_esp, %%esp\n\t"
      "popfl\n\t"
      "popal\n\t" ::: "memory", "cc");
  fwrite((void*)kData, 1, kDataSize, stdout);
  return 0;
}
