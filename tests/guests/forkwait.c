/* forkwait: process creation and teardown as an OS does it, in the spirit of
 * the forkwait macrobenchmark of Adams & Agesen (ASPLOS 2006), where a
 * process forks n children one at a time and waits for each.
 *
 * A ring-3 parent calls fork (int 0x80).  fork gives the child an address
 * space of its own: a page directory (the kernel half copied, as Linux
 * does), a user page table, and copies of the parent's data and stack pages.
 * The parent waits; the kernel switches to the child (CR3, TSS esp0).  The
 * child touches HEAP_PAGES fresh heap pages (demand-zero: one #PF each,
 * the kernel maps a zeroed frame), writes its private copy of the data page,
 * and exits; exit returns every frame to the free list (LIFO, so page
 * directories and tables are reused at once, like a real kernel's hot
 * pages) and switches back to the parent, whose wait returns the exit code.
 *
 * Checks: every exit code (a function of the fork number, the child's pid
 * and what it read back from its heap and its data-page copy), the parent's
 * data page untouched by its children, no frame leaked, the number of
 * page faults.  cmdline: n=<forks> (default 2000). */
#include "rt.h"

#define UBASE 0x40000000u          /* user data page; the stack page follows */
#define USTACK_TOP (UBASE + 0x2000)
#define UHEAP (UBASE + 0x10000)    /* demand-zero heap */
#define HEAP_PAGES 4
#define POOL_BASE 0x00800000u      /* frames handed out by the kernel: 8..12 MiB */
#define POOL_FRAMES 1024
#define SYS_FORK 1
#define SYS_WAIT 2
#define SYS_EXIT 3
#define SYS_GETPID 4
#define PARENT_MARKER 0x5eed1234u

/* ======================= user side (ring 3; touches only its own pages) ======================= */
struct udata {
  uint32_t marker;
  uint32_t fork_no;
  uint32_t checksum;
  uint32_t scratch[8];
};
#define UDATA ((volatile struct udata *)UBASE)

static inline int sys(int n, uint32_t a)
{
  int r;
  __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a) : "memory");
  return r;
}

/* What a child computes (the kernel side checks it with the same formula). */
static inline uint32_t child_code(uint32_t fork_no, uint32_t pid)
{
  uint32_t v = fork_no * 2654435761u ^ pid;
  uint32_t sum = 0;
  for (uint32_t i = 0; i < HEAP_PAGES; i++)
    sum += (v + i) * (i + 1);
  return (sum ^ (sum >> 7)) & 0x3fffffffu;
}

static void __attribute__((noreturn)) user_child(void)
{
  const uint32_t pid = (uint32_t)sys(SYS_GETPID, 0);
  const uint32_t fork_no = UDATA->fork_no;  /* the parent's value, in the copy */
  const uint32_t v = fork_no * 2654435761u ^ pid;
  for (uint32_t i = 0; i < HEAP_PAGES; i++) {
    volatile uint32_t *page = (volatile uint32_t *)(UHEAP + i * 4096);
    if (page[1] != 0) /* demand-zero */
      sys(SYS_EXIT, 0xffffffffu);
    page[0] = v + i;
    page[1023] = i + 1;
  }
  uint32_t sum = 0;
  for (uint32_t i = 0; i < HEAP_PAGES; i++) {
    volatile uint32_t *page = (volatile uint32_t *)(UHEAP + i * 4096);
    sum += page[0] * page[1023];
  }
  UDATA->marker = ~PARENT_MARKER; /* its own copy: the parent's stays */
  UDATA->scratch[fork_no % 8] = sum;
  sys(SYS_EXIT, (sum ^ (sum >> 7)) & 0x3fffffffu);
  for (;;)
    ;
}

static void __attribute__((noreturn)) user_parent(void)
{
  UDATA->marker = PARENT_MARKER;
  UDATA->checksum = 0;
  const uint32_t n = UDATA->fork_no; /* the kernel left n here */
  for (uint32_t i = 0; i < n; i++) {
    UDATA->fork_no = i;
    int pid = sys(SYS_FORK, 0);
    if (pid == 0)
      user_child();
    if (pid < 0)
      sys(SYS_EXIT, 1);
    const uint32_t code = (uint32_t)sys(SYS_WAIT, (uint32_t)pid);
    if (UDATA->marker != PARENT_MARKER)
      sys(SYS_EXIT, 2);
    UDATA->checksum = UDATA->checksum * 33 + code;
  }
  sys(SYS_EXIT, 0);
  for (;;)
    ;
}

/* ======================= kernel side ======================= */
extern char __image_start[], __text_end[], __image_end[];

struct proc {
  uint32_t pid;
  int state; /* 0 free, 1 runnable, 2 waiting, 3 zombie */
  uint32_t exit_code;
  uint32_t wait_for;
  volatile uint32_t *pd, *pt;
  struct regs *frame;
  uint32_t kstack[1024] __attribute__((aligned(16)));
};
enum { FREE, RUNNABLE, WAITING, ZOMBIE };

static struct proc procs[2]; /* the parent and its current child */
static struct proc *cur;
static volatile uint32_t kpd[1024] __attribute__((aligned(4096)));
static volatile uint32_t kpt0[1024] __attribute__((aligned(4096)));
static uint32_t free_frames[POOL_FRAMES];
static uint32_t n_free;
static uint32_t next_pid = 1;
static uint32_t forks, heap_faults, kernel_faults;
static struct ctx kmain_ctx;
static uint32_t parent_exit = 0xffffffffu, parent_checksum, parent_marker;

static uint32_t alloc_frame(void)
{
  if (!n_free)
    rt_fail_now("out of frames");
  return free_frames[--n_free];
}
static void free_frame(uint32_t f) { free_frames[n_free++] = f; }

static void switch_to(struct proc *p)
{
  cur = p;
  rt_tss.esp0 = (uint32_t)(p->kstack + 1024);
  write_cr3((uint32_t)p->pd);
}

/* A new address space: the kernel half of the page directory and an empty user page table. */
static void new_space(struct proc *p)
{
  p->pd = (volatile uint32_t *)alloc_frame();
  p->pt = (volatile uint32_t *)alloc_frame();
  for (int i = 0; i < 1024; i++) {
    p->pd[i] = kpd[i];
    p->pt[i] = 0;
  }
  p->pd[UBASE >> 22] = (uint32_t)p->pt | 0x7;
}

static void destroy_space(struct proc *p)
{
  for (int i = 0; i < 1024; i++)
    if (p->pt[i] & 1)
      free_frame(p->pt[i] & ~0xfffu);
  free_frame((uint32_t)p->pt);
  free_frame((uint32_t)p->pd);
  p->pd = p->pt = 0;
}

static struct regs *sys_fork(struct regs *r)
{
  struct proc *c = &procs[1];
  if (cur != &procs[0] || c->state != FREE) {
    r->eax = (uint32_t)-1;
    return r;
  }
  forks++;
  c->pid = ++next_pid;
  c->state = RUNNABLE;
  new_space(c);
  /* the parent's data and stack pages are copied (its other pages are heap: none) */
  for (int i = 0; i < 1024; i++) {
    uint32_t pte = cur->pt[i];
    if (!(pte & 1))
      continue;
    uint32_t f = alloc_frame();
    memcpy((void *)f, (const void *)(pte & ~0xfffu), 4096);
    c->pt[i] = f | (pte & 0xfff & ~0x60u); /* not accessed, not dirty */
  }
  /* the child returns from the same int 0x80 with eax = 0 */
  struct regs *cr = (struct regs *)(c->kstack + 1024) - 1;
  *cr = *r;
  cr->eax = 0;
  c->frame = cr;
  r->eax = c->pid;
  return r;
}

static struct regs *sys_wait(struct regs *r)
{
  struct proc *c = &procs[1];
  if (cur != &procs[0] || c->state == FREE || c->pid != r->ebx) {
    r->eax = (uint32_t)-1;
    return r;
  }
  if (c->state != ZOMBIE) { /* block until it exits */
    cur->state = WAITING;
    cur->frame = r;
    switch_to(c);
    return c->frame;
  }
  r->eax = c->exit_code;
  c->state = FREE;
  return r;
}

static struct regs *sys_exit(struct regs *r)
{
  if (cur == &procs[0]) { /* the parent: the run is over */
    parent_exit = r->ebx;
    parent_checksum = ((volatile struct udata *)UBASE)->checksum;
    parent_marker = ((volatile struct udata *)UBASE)->marker;
    write_cr3((uint32_t)kpd);
    destroy_space(cur);
    cur = 0;
    ctx_restore(&kmain_ctx, 1);
  }
  struct proc *c = cur, *p = &procs[0];
  c->exit_code = r->ebx;
  c->state = ZOMBIE;
  switch_to(p); /* off the child's address space before it goes */
  destroy_space(c);
  p->state = RUNNABLE;
  c->state = FREE;
  p->frame->eax = c->exit_code;
  return p->frame;
}

static struct regs *syscall(struct regs *r)
{
  switch (r->eax) {
  case SYS_FORK: return sys_fork(r);
  case SYS_WAIT: return sys_wait(r);
  case SYS_EXIT: return sys_exit(r);
  case SYS_GETPID: r->eax = cur->pid; return r;
  }
  r->eax = (uint32_t)-1;
  return r;
}

static struct regs *page_fault(struct regs *r)
{
  const uint32_t cr2 = read_cr2();
  if ((r->cs & 3) == 3 && !(r->err & 1) && cr2 >= UHEAP && cr2 < UHEAP + HEAP_PAGES * 4096) {
    uint32_t f = alloc_frame();
    memset((void *)f, 0, 4096);
    cur->pt[(cr2 >> 12) & 1023] = f | 0x7;
    heap_faults++;
    return r; /* the access restarts */
  }
  kernel_faults++;
  printf("unexpected fault: vector %u err %x eip %08x cr2 %08x (pid %u)\n", r->vec, r->err, r->eip, cr2,
         cur ? cur->pid : 0);
  rt_fail_now("unexpected page fault");
}

static struct regs *other_fault(struct regs *r)
{
  printf("unexpected exception: vector %u err %x eip %08x\n", r->vec, r->err, r->eip);
  rt_fail_now("unexpected exception");
}

static void setup_paging(void)
{
  /* 0-4 MiB through kpt0: the image's text readable by ring 3, all else supervisor */
  for (uint32_t i = 0; i < 1024; i++) {
    uint32_t a = i << 12, f = 0x3;
    if (a >= (uint32_t)__image_start && a < (uint32_t)__text_end)
      f = 0x5;
    kpt0[i] = a | f;
  }
  kpt0[0] = 0;
  kpd[0] = (uint32_t)kpt0 | 0x7;
  for (uint32_t i = 1; i < 4; i++)
    kpd[i] = (i << 22) | 0x83; /* 4 MiB supervisor pages: the frame pool is in here */
  write_cr4(read_cr4() | CR4_PSE);
  write_cr3((uint32_t)kpd);
  write_cr0(read_cr0() | CR0_PG | CR0_WP);
}

int main(void)
{
  const uint32_t n = (uint32_t)cmdline_ulong("n", 2000);
  printf("forkwait guest: %u fork/wait pairs, %u heap pages per child\n", n, HEAP_PAGES);
  if ((uint32_t)__image_end > POOL_BASE)
    rt_fail_now("the image overlaps the frame pool");
  for (uint32_t i = 0; i < POOL_FRAMES; i++)
    free_frames[n_free++] = POOL_BASE + (POOL_FRAMES - 1 - i) * 4096;
  setup_paging();
  for (int v = 0; v < 32; v++)
    isr_set(v, other_fault);
  isr_set(14, page_fault);
  isr_set(0x80, syscall);
  idt_set_dpl(0x80, 3);

  /* the parent: data and stack page, n in its data page */
  struct proc *p = &procs[0];
  p->pid = next_pid;
  p->state = RUNNABLE;
  new_space(p);
  for (int i = 0; i < 2; i++) {
    uint32_t f = alloc_frame();
    memset((void *)f, 0, 4096);
    p->pt[i] = f | 0x7;
  }
  ((volatile struct udata *)(p->pt[0] & ~0xfffu))->fork_no = n;
  struct regs *r = (struct regs *)(p->kstack + 1024) - 1;
  memset(r, 0, sizeof *r);
  r->ds = r->es = r->fs = r->gs = SEL_UDATA;
  r->eip = (uint32_t)user_parent;
  r->cs = SEL_UCODE;
  r->eflags = 0x2; /* interrupts off: the run does not depend on timing */
  r->useresp = USTACK_TOP;
  r->ss = SEL_UDATA;
  p->frame = r;
  if (ctx_save(&kmain_ctx) == 0) {
    switch_to(p);
    __asm__ volatile("movl %0, %%esp\n\tjmp isr_return" : : "r"(p->frame));
  }
  write_cr0(read_cr0() & ~CR0_PG);

  uint32_t want = 0;
  for (uint32_t i = 0; i < n; i++)
    want = want * 33 + child_code(i, i + 2);
  printf("forks: %u, heap page faults: %u, parent exit %u\n", forks, heap_faults, parent_exit);
  printf("forkwait checksum = %08x\n", parent_checksum);
  CHECK_EQ(parent_exit, 0);
  CHECK_EQ(forks, n);
  CHECK_EQ(heap_faults, n * HEAP_PAGES);
  CHECK_EQ(kernel_faults, 0);
  CHECK_EQ(parent_checksum, want);
  CHECK_EQ(parent_marker, PARENT_MARKER);
  CHECK_EQ(n_free, POOL_FRAMES); /* every frame came back */
  rt_finish();
}
