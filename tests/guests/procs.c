/* procs: a tiny preemptive kernel.  Three ring-3 processes with separate page
 * directories (private pages at the same virtual address), a TSS for the
 * ring 3 -> 0 stack switch, PIT-driven round-robin preemption and int 0x80
 * system calls (write, yield, exit, getpid, preemptions).  Process output is
 * buffered by the kernel and printed in pid order at the end, so the serial
 * output does not depend on timing. */
#include "rt.h"

#define NPROC 3
#define UBASE 0x40000000u /* private data page */
#define USTACK_TOP (UBASE + 4 * 4096)
#define SYS_WRITE 1
#define SYS_YIELD 2
#define SYS_EXIT 3
#define SYS_GETPID 4
#define SYS_PREEMPTS 5

/* ======================= user side (ring 3; only touches its own pages) ======================= */
static inline int sys(int n, uint32_t a, uint32_t b)
{
  int r;
  __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b) : "memory");
  return r;
}
struct ubuf { char s[96]; int n; };
static void u_str(struct ubuf *b, const char *s)
{
  while (*s && b->n < (int)sizeof b->s - 1)
    b->s[b->n++] = *s++;
}
static void u_num(struct ubuf *b, uint32_t v)
{
  char t[12];
  int k = 0;
  do {
    t[k++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (k && b->n < (int)sizeof b->s - 1)
    b->s[b->n++] = t[--k];
}
static void u_flush(struct ubuf *b)
{
  b->s[b->n++] = '\n';
  sys(SYS_WRITE, (uint32_t)b->s, (uint32_t)b->n);
  b->n = 0;
}
/* Store a marker in the private page, get preempted at least twice, check it. */
static void u_private_check(uint32_t marker)
{
  volatile uint32_t *priv = (volatile uint32_t *)UBASE;
  *priv = marker;
  for (int i = 0; i < 3; i++)
    sys(SYS_YIELD, 0, 0);
  while (sys(SYS_PREEMPTS, 0, 0) < 2)
    for (volatile int i = 0; i < 1000; i++)
      ;
  struct ubuf b = { .n = 0 };
  u_str(&b, *priv == marker ? "private page intact" : "private page CORRUPTED");
  u_flush(&b);
}

static void proc1(void)
{
  struct ubuf b = { .n = 0 };
  uint32_t sum = 0;
  for (uint32_t k = 1; k <= 20000; k++)
    sum += k * k;
  u_str(&b, "pid ");
  u_num(&b, (uint32_t)sys(SYS_GETPID, 0, 0));
  u_str(&b, ": sum of squares 1..20000 mod 2^32 = ");
  u_num(&b, sum);
  u_flush(&b);
  u_private_check(0x11111111);
  sys(SYS_EXIT, 0, 0);
}
static void proc2(void)
{
  struct ubuf b = { .n = 0 };
  uint32_t count = 0;
  for (uint32_t k = 2; k < 30000; k++) {
    uint32_t d = 2;
    while (d * d <= k && k % d)
      d++;
    count += d * d > k;
  }
  u_str(&b, "pid ");
  u_num(&b, (uint32_t)sys(SYS_GETPID, 0, 0));
  u_str(&b, ": primes below 30000 = ");
  u_num(&b, count);
  u_flush(&b);
  /* the kernel must refuse a buffer outside the caller's pages */
  int r = sys(SYS_WRITE, 0x00100000u, 16);
  u_str(&b, "write from a kernel address returned ");
  u_str(&b, r == -1 ? "-1" : "something else");
  u_flush(&b);
  u_private_check(0x22222222);
  sys(SYS_EXIT, 2, 0);
}
static void proc3(void)
{
  struct ubuf b = { .n = 0 };
  uint32_t best = 0, best_steps = 0;
  for (uint32_t s = 1; s < 100000; s++) {
    uint32_t x = s, c = 0;
    while (x != 1) {
      x = (x & 1) ? 3 * x + 1 : x / 2;
      c++;
    }
    if (c > best_steps) {
      best_steps = c;
      best = s;
    }
  }
  u_str(&b, "pid ");
  u_num(&b, (uint32_t)sys(SYS_GETPID, 0, 0));
  u_str(&b, ": longest Collatz chain below 100000 starts at ");
  u_num(&b, best);
  u_str(&b, " (");
  u_num(&b, best_steps);
  u_str(&b, " steps)");
  u_flush(&b);
  u_private_check(0x33333333);
  /* code pages are read-only for ring 3: this write gets the process killed */
  *(volatile uint8_t *)(uint32_t)proc3 = 0x90;
  sys(SYS_EXIT, 99, 0);
}

/* ======================= kernel side ======================= */
extern char __image_start[], __text_end[];
struct proc {
  int pid, alive, exit_code;
  uint32_t preempts, syscalls;
  struct regs *frame;
  volatile uint32_t *pd;
  char out[512];
  uint32_t outlen;
  uint32_t kstack[2048] __attribute__((aligned(16)));
};
static struct proc procs[NPROC];
static struct proc *cur;
static volatile uint32_t kpd[1024] __attribute__((aligned(4096)));
static volatile uint32_t kpt0[1024] __attribute__((aligned(4096)));
static volatile uint32_t upd[NPROC][1024] __attribute__((aligned(4096)));
static volatile uint32_t upt[NPROC][1024] __attribute__((aligned(4096)));
static uint8_t uframes[NPROC][4][4096] __attribute__((aligned(4096)));
static struct ctx kmain_ctx;
static uint32_t total_ticks, switches;

static void switch_to(struct proc *p)
{
  cur = p;
  rt_tss.esp0 = (uint32_t)(p->kstack + 2048);
  write_cr3((uint32_t)p->pd);
}
static struct regs *schedule(struct regs *r)
{
  if (cur && cur->alive)
    cur->frame = r;
  int start = cur ? cur->pid : 0; /* pids are 1..NPROC, index pid-1 */
  for (int k = 1; k <= NPROC; k++) {
    struct proc *p = &procs[(start + k - 1) % NPROC];
    if (p->alive) {
      if (p != cur)
        switches++;
      switch_to(p);
      return p->frame;
    }
  }
  write_cr3((uint32_t)kpd);
  cur = 0;
  ctx_restore(&kmain_ctx, 1); /* everybody exited */
}
static struct regs *timer_irq(struct regs *r)
{
  total_ticks++;
  pic_eoi(0);
  if ((r->cs & 3) != 3)
    return r;
  cur->preempts++;
  return schedule(r);
}
static struct regs *syscall(struct regs *r)
{
  cur->syscalls++;
  switch (r->eax) {
  case SYS_WRITE: {
    uint32_t p = r->ebx, n = r->ecx;
    if (p < UBASE || n > USTACK_TOP - UBASE || p > USTACK_TOP - n || cur->outlen + n > sizeof cur->out) {
      r->eax = (uint32_t)-1;
      return r;
    }
    memcpy(cur->out + cur->outlen, (const void *)p, n); /* same address space: CR3 is the caller's */
    cur->outlen += n;
    r->eax = n;
    return r;
  }
  case SYS_YIELD:
    r->eax = 0;
    return schedule(r);
  case SYS_EXIT:
    cur->alive = 0;
    cur->exit_code = (int)r->ebx;
    return schedule(r);
  case SYS_GETPID:
    r->eax = (uint32_t)cur->pid;
    return r;
  case SYS_PREEMPTS:
    r->eax = cur->preempts;
    return r;
  }
  r->eax = (uint32_t)-1;
  return r;
}
static struct regs *user_fault(struct regs *r)
{
  if ((r->cs & 3) != 3) {
    printf("kernel fault: vector %u err %x eip %08x cr2 %08x\n", r->vec, r->err, r->eip, read_cr2());
    rt_fail_now("kernel fault");
  }
  cur->alive = 0;
  cur->exit_code = -(int)r->vec;
  int n = snprintf(cur->out + cur->outlen, sizeof cur->out - cur->outlen,
                   "killed: vector %u err %u at cr2 == own code\n", r->vec, r->err);
  if (r->vec == 14 && read_cr2() != (uint32_t)proc3)
    n = snprintf(cur->out + cur->outlen, sizeof cur->out - cur->outlen, "killed: vector %u, unexpected cr2\n", r->vec);
  cur->outlen += (uint32_t)n;
  return schedule(r);
}

static void setup_paging(void)
{
  /* 0-4 MiB through kpt0: image text/rodata readable by ring 3, everything else supervisor */
  for (uint32_t i = 0; i < 1024; i++) {
    uint32_t a = i << 12, f = 0x3; /* P RW */
    if (a >= (uint32_t)__image_start && a < (uint32_t)__text_end)
      f = 0x5; /* P US, read-only for users */
    kpt0[i] = a | f;
  }
  kpt0[0] = 0;
  kpd[0] = (uint32_t)kpt0 | 0x7;
  for (uint32_t i = 1; i < 4; i++)
    kpd[i] = (i << 22) | 0x83; /* 4 MiB supervisor */
  for (int p = 0; p < NPROC; p++) {
    for (int i = 0; i < 1024; i++)
      upd[p][i] = kpd[i];
    for (int i = 0; i < 4; i++)
      upt[p][i] = (uint32_t)uframes[p][i] | 0x7;
    upd[p][UBASE >> 22] = (uint32_t)upt[p] | 0x7;
  }
  write_cr4(read_cr4() | CR4_PSE);
  write_cr3((uint32_t)kpd);
  write_cr0(read_cr0() | CR0_PG | CR0_WP);
}

static void make_proc(int idx, void (*entry)(void))
{
  struct proc *p = &procs[idx];
  p->pid = idx + 1;
  p->alive = 1;
  p->pd = upd[idx];
  struct regs *r = (struct regs *)(p->kstack + 2048) - 1;
  memset(r, 0, sizeof *r);
  r->ds = r->es = r->fs = r->gs = SEL_UDATA;
  r->eip = (uint32_t)entry;
  r->cs = SEL_UCODE;
  r->eflags = 0x202; /* IF */
  r->useresp = USTACK_TOP;
  r->ss = SEL_UDATA;
  p->frame = r;
}

int main(void)
{
  printf("procs guest: 3 user processes, PIT preemption, int 0x80\n");
  setup_paging();
  for (int v = 0; v < 32; v++)
    isr_set(v, user_fault);
  isr_set(0x20, timer_irq);
  isr_set(0x80, syscall);
  idt_set_dpl(0x80, 3);
  make_proc(0, proc1);
  make_proc(1, proc2);
  make_proc(2, proc3);
  pic_init(0x20, 0x28);
  pit_periodic(1000);
  pic_unmask(0);
  if (ctx_save(&kmain_ctx) == 0) {
    switch_to(&procs[0]);
    __asm__ volatile("movl %0, %%esp\n\tjmp isr_return" : : "r"(procs[0].frame));
  }
  /* back here once every process has exited */
  pic_mask_all();
  write_cr0(read_cr0() & ~CR0_PG);
  static const char *const want[NPROC] = {
    "pid 1: sum of squares 1..20000 mod 2^32 = 3986946480\nprivate page intact\n",
    "pid 2: primes below 30000 = 3245\nwrite from a kernel address returned -1\nprivate page intact\n",
    "pid 3: longest Collatz chain below 100000 starts at 77031 (350 steps)\nprivate page intact\n"
    "killed: vector 14 err 7 at cr2 == own code\n",
  };
  static const int want_code[NPROC] = { 0, 2, -14 };
  static const uint32_t marker[NPROC] = { 0x11111111, 0x22222222, 0x33333333 };
  for (int i = 0; i < NPROC; i++) {
    struct proc *p = &procs[i];
    p->out[p->outlen < sizeof p->out ? p->outlen : sizeof p->out - 1] = 0;
    printf("--- pid %d exit %d ---\n%s", p->pid, p->exit_code, p->out);
    CHECK(!strcmp(p->out, want[i]));
    CHECK_EQ(p->exit_code, want_code[i]);
    CHECK(p->preempts >= 2);
    CHECK_EQ(*(uint32_t *)uframes[i][0], marker[i]); /* private pages really are separate frames */
  }
  CHECK(switches >= 6);
  printf("all processes finished; each was preempted at least twice\n");
  rt_finish();
}
