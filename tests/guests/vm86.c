/* vm86: virtual-8086 mode (SDM vol. 3 chapter 20), entered from ring 0 by
 * IRET with EFLAGS.VM and by a hardware task switch, with a TSS whose I/O
 * permission bitmap allows only COM1:
 *   IOPL 0: CLI, STI, PUSHF, POPF, INT n and IRET raise #GP(0) to this
 *   kernel, whose #GP handler is a v8086 monitor: it keeps a virtual IF,
 *   pushes/pops FLAGS on the v8086 stack, reflects INT 0x60 into the v8086
 *   IVT (a handler there doubles AX) and emulates its IRET, records the OUT
 *   to port 0x80 the bitmap refuses, and takes HLT as the end; the v8086
 *   program prints a line through COM1 itself (the bitmap allows it), loads
 *   segment registers as paragraphs, and its #DE goes to the ring-0 handler
 *   (the frame: VM set, the faulting IP, the v8086 ES/DS/FS/GS above SS:ESP,
 *   the data segments null in the handler);
 *   IOPL 3: CLI/STI/PUSHF/POPF run without faults (IF really changes, IOPL
 *   cannot), INT 0x61 goes through the IDT's DPL-3 gate to ring 0, OUT to a
 *   refused port still faults (I/O is not IOPL-sensitive in v8086 mode), and
 *   the PIT's IRQ0 interrupts the v8086 program (frames with VM set) while it
 *   waits for the handler's count;
 *   a far JMP to a TSS whose EFLAGS has VM starts a v8086 task. */
#include "rt.h"
#include "vm86.h"

#define SEL_V86TSS 0x38
#define EFL_VM 0x20000u
#define EFL_IF 0x200u
#define EFL_IOPL3 0x3000u

extern char v86_start[], v86_end[], v86_part_a[], v86_part_b[], v86_part_c[], v86_int60[], v86_de_site[],
    v86_int61_site[];
extern void v86_iret(const uint32_t frame[9]);

static uint64_t gdt[8] __attribute__((aligned(8)));
static struct {
  struct tss tss;
  uint8_t bitmap[8192];
  uint8_t end;
} __attribute__((packed)) io_tss;
static struct tss v86_tss;

struct v86_frame {
  struct regs r;
  uint32_t es, ds, fs, gs; /* pushed by the CPU above SS:ESP for an event from v8086 mode */
};

static uint32_t off(char *label) { return (uint32_t)(label - v86_start); }
static uint8_t *lin(uint32_t seg, uint32_t offset)
{
  uintptr_t a = (seg << 4) + (offset & 0xffff);
  __asm__("" : "+r"(a));  /* low addresses are memory here, not null-pointer arithmetic */
  return (uint8_t *)a;
}
static uint16_t res16(int o) { return *(volatile uint16_t *)(V86_RES + o); }

static struct ctx v86_ctx;
static int vif;  /* the monitor's virtual IF (IOPL 0) */
static unsigned gp_cli, gp_sti, gp_pushf, gp_popf, gp_int, gp_iret, gp_out, gp_hlt, gp_other;
static unsigned out_port, out_value;
static unsigned de_count, de_vm, de_ip, de_segs_ok, de_null_ds;
static unsigned int61_vm, int61_cs, int61_ip, int61_ss, int61_sp, int61_ds, int61_es, int61_fs, int61_gs, int61_hds;
static volatile unsigned ticks_from_v86, ticks_total;

static void v86_push(struct regs *r, uint16_t v)
{
  r->useresp = (r->useresp & 0xffff0000u) | ((r->useresp - 2) & 0xffff);
  *(uint16_t *)lin(r->ss, r->useresp) = v;
}
static uint16_t v86_pop(struct regs *r)
{
  uint16_t v = *(uint16_t *)lin(r->ss, r->useresp);
  r->useresp = (r->useresp & 0xffff0000u) | ((r->useresp + 2) & 0xffff);
  return v;
}

/* #GP: the v8086 monitor. */
static struct regs *on_gp(struct regs *r)
{
  if (!(r->eflags & EFL_VM)) {
    printf("#GP outside v8086 mode at 0x%x:0x%x error 0x%x\n", r->cs, r->eip, r->err);
    rt_fail_now("unexpected #GP");
  }
  const uint8_t *ip = lin(r->cs, r->eip);
  switch (ip[0]) {
    case 0xfa: gp_cli++; vif = 0; r->eip += 1; break;
    case 0xfb: gp_sti++; vif = 1; r->eip += 1; break;
    case 0x9c:
      gp_pushf++;
      v86_push(r, (uint16_t)((r->eflags & ~EFL_IF) | (vif ? EFL_IF : 0)));
      r->eip += 1;
      break;
    case 0x9d: {
      gp_popf++;
      const uint16_t v = v86_pop(r);
      vif = (v & EFL_IF) != 0;
      r->eflags = (r->eflags & ~0x0cd5u) | (v & 0x0cd5u);
      r->eip += 1;
      break;
    }
    case 0xcd: {  /* INT n: into the v8086 IVT, FLAGS/CS/IP on the v8086 stack */
      gp_int++;
      const uint8_t n = ip[1];
      v86_push(r, (uint16_t)((r->eflags & ~EFL_IF) | (vif ? EFL_IF : 0)));
      v86_push(r, (uint16_t)r->cs);
      v86_push(r, (uint16_t)(r->eip + 2));
      vif = 0;
      const uint16_t *ivt = (const uint16_t *)lin(0, n * 4u);
      r->eip = ivt[0];
      r->cs = ivt[1];
      break;
    }
    case 0xcf: {
      gp_iret++;
      r->eip = v86_pop(r);
      r->cs = v86_pop(r);
      const uint16_t v = v86_pop(r);
      vif = (v & EFL_IF) != 0;
      r->eflags = (r->eflags & ~0x0cd5u) | (v & 0x0cd5u);
      break;
    }
    case 0xe6: gp_out++; out_port = ip[1]; out_value = r->eax & 0xff; r->eip += 2; break;
    case 0xf4: gp_hlt++; ctx_restore(&v86_ctx, 1);
    default:
      gp_other++;
      printf("v8086 monitor: unexpected opcode 0x%x at 0x%x:0x%x\n", ip[0], r->cs, r->eip);
      rt_fail_now("v8086 monitor");
  }
  return r;
}

static struct regs *on_de(struct regs *r)
{
  struct v86_frame *f = (struct v86_frame *)r;
  de_count++;
  de_vm = (r->eflags & EFL_VM) != 0;
  de_ip = r->eip;
  de_segs_ok = f->ds == V86_DS && f->es == V86_ES && f->fs == (V86_ES * 16 + 0x10) >> 4 && f->gs == 0;
  de_null_ds = r->ds == 0 && r->es == 0;
  r->eip += 2;  /* div cl */
  return r;
}

static struct regs *on_int61(struct regs *r)
{
  struct v86_frame *f = (struct v86_frame *)r;
  int61_vm = (r->eflags & EFL_VM) != 0;
  int61_cs = r->cs;
  int61_ip = r->eip;
  int61_ss = r->ss;
  int61_sp = r->useresp;
  int61_ds = f->ds;
  int61_es = f->es;
  int61_fs = f->fs;
  int61_gs = f->gs;
  int61_hds = r->ds;
  r->eax += 1;
  return r;
}

static struct regs *on_timer(struct regs *r)
{
  ticks_total++;
  if (r->eflags & EFL_VM) {
    ticks_from_v86++;
    (*(volatile uint16_t *)(V86_RES + R_TICKS))++;
  }
  pic_eoi(0);
  return r;
}

static uint64_t tss_desc(uint32_t base, uint32_t limit)
{
  return (limit & 0xffff) | ((uint64_t)(base & 0xffffff) << 16) | (uint64_t)0x89 << 40 |
         (uint64_t)((limit >> 16) & 0xf) << 48 | ((uint64_t)(base >> 24) << 56);
}

static void setup(void)
{
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } d;
  __asm__ volatile("sgdt %0" : "=m"(d));
  memcpy(gdt, (void *)d.base, 6 * 8);
  io_tss.tss = rt_tss;  /* the same ring-0 stack */
  io_tss.tss.iomap = sizeof(struct tss);
  memset(io_tss.bitmap, 0xff, sizeof io_tss.bitmap);
  io_tss.end = 0xff;
  for (uint16_t p = 0x3f8; p < 0x400; p++)
    io_tss.bitmap[p / 8] &= (uint8_t) ~(1u << (p % 8));
  gdt[SEL_IOTSS >> 3] = tss_desc((uint32_t)&io_tss, sizeof io_tss - 1);
  gdt[SEL_V86TSS >> 3] = tss_desc((uint32_t)&v86_tss, sizeof v86_tss - 1);
  d.lim = sizeof gdt - 1;
  d.base = (uint32_t)gdt;
  __asm__ volatile("lgdt %0" : : "m"(d));
  __asm__ volatile("ltr %w0" : : "r"((uint16_t)SEL_IOTSS));
  isr_set(13, on_gp);
  isr_set(0, on_de);
  isr_set(0x61, on_int61);
  idt_set_dpl(0x61, 3);
  isr_set(0x20, on_timer);
  pic_init(0x20, 0x28);  /* every line masked until part B */
  /* The v8086 IVT: INT 0x60 -> the program's handler. */
  uint16_t *ivt60 = (uint16_t *)lin(0, 0x60 * 4);
  ivt60[0] = (uint16_t)off(v86_int60);
  ivt60[1] = V86_CS;
}

/* Runs the v8086 program at `entry` with `eflags` (VM added) until its HLT. */
static void run_v86(char *entry, uint32_t eflags)
{
  const uint32_t frame[9] = {off(entry), V86_CS, eflags | EFL_VM, V86_SP, V86_SS, 0, 0, 0, 0};
  if (ctx_save(&v86_ctx) == 0)
    v86_iret(frame);
}

int main(void)
{
  const uint32_t size = (uint32_t)(v86_end - v86_start);
  printf("v8086 program: %u bytes at 0x%x, CS 0x%x\n", size, V86_CODE, V86_CS);
  setup();
  memcpy((void *)V86_CODE, v86_start, size);
  memset((void *)V86_RES, 0, R_END);
  memset((void *)(V86_ES * 16), 0, 0x20);

  /* ---- IOPL 0 */
  vif = 1;
  run_v86(v86_part_a, EFL_IF);
  printf("IOPL 0, #GP to the monitor: cli %u sti %u pushf %u popf %u int %u iret %u out %u hlt %u other %u\n",
         gp_cli, gp_sti, gp_pushf, gp_popf, gp_int, gp_iret, gp_out, gp_hlt, gp_other);
  CHECK_EQ(gp_cli, 1);
  CHECK_EQ(gp_sti, 1);
  CHECK_EQ(gp_pushf, 2);
  CHECK_EQ(gp_popf, 1);
  CHECK_EQ(gp_int, 1);
  CHECK_EQ(gp_iret, 1);
  CHECK_EQ(gp_out, 1);
  CHECK_EQ(gp_hlt, 1);
  printf("virtual IF pushed after sti %u, after popf of 0 %u; int 0x60 in the v8086 IVT: 21 -> %u\n",
         (res16(R_A_PUSHF1) >> 9) & 1, (res16(R_A_PUSHF2) >> 9) & 1, res16(R_A_INT60));
  CHECK_EQ((res16(R_A_PUSHF1) >> 9) & 1, 1);
  CHECK_EQ((res16(R_A_PUSHF2) >> 9) & 1, 0);
  CHECK_EQ(res16(R_A_INT60), 43);
  printf("refused out: port 0x%x value 0x%x; ES:0010 read back through FS: 0x%x\n", out_port, out_value,
         res16(R_A_ES_WORD));
  CHECK_EQ(out_port, 0x80);
  CHECK_EQ(out_value, 0x42);
  CHECK_EQ(res16(R_A_ES_WORD), 0x1234);
  printf("#DE from v8086 mode: %u, VM in the frame %u, IP %s, v8086 segments in the frame %s, "
         "DS/ES null in the handler %s, resumed %s\n",
         de_count, de_vm, de_ip == off(v86_de_site) ? "= the div" : "wrong", de_segs_ok ? "yes" : "no",
         de_null_ds ? "yes" : "no", res16(R_A_DE_DONE) ? "yes" : "no");
  CHECK_EQ(de_count, 1);
  CHECK_EQ(de_vm, 1);
  CHECK_EQ(de_ip, off(v86_de_site));
  CHECK(de_segs_ok);
  CHECK(de_null_ds);
  CHECK_EQ(res16(R_A_DE_DONE), 1);

  /* ---- IOPL 3, with the PIT's IRQ0 */
  pit_periodic(1000);
  pic_unmask(0);
  const unsigned gp_before = gp_cli + gp_sti + gp_pushf + gp_popf + gp_int + gp_iret;
  run_v86(v86_part_b, EFL_IF | EFL_IOPL3);
  pic_mask_all();
  const unsigned gp_after = gp_cli + gp_sti + gp_pushf + gp_popf + gp_int + gp_iret;
  printf("IOPL 3: #GP for cli/sti/pushf/popf/int/iret %u; FLAGS after cli 0x%x, after sti 0x%x, after popf 0x%x\n",
         gp_after - gp_before, res16(R_B_PUSHF_CLI) & 0x3200, res16(R_B_PUSHF_STI) & 0x3200,
         res16(R_B_POPF) & 0x3fd5);
  CHECK_EQ(gp_after, gp_before);
  CHECK_EQ(res16(R_B_PUSHF_CLI) & 0x3200, 0x3000);
  CHECK_EQ(res16(R_B_PUSHF_STI) & 0x3200, 0x3200);
  CHECK_EQ(res16(R_B_POPF) & 0x3fd5, 0x3ad5);
  printf("int 0x61 through the IDT: VM %u, CS 0x%x, IP %s, SS:SP 0x%x:0x%x, frame DS 0x%x ES 0x%x FS 0x%x "
         "GS 0x%x, DS in the handler 0x%x; AX 41 -> %u\n",
         int61_vm, int61_cs, int61_ip == off(v86_int61_site) + 2 ? "= after it" : "wrong", int61_ss, int61_sp,
         int61_ds, int61_es, int61_fs, int61_gs, int61_hds, res16(R_B_INT61_AX));
  CHECK_EQ(int61_vm, 1);
  CHECK_EQ(int61_cs, V86_CS);
  CHECK_EQ(int61_ip, off(v86_int61_site) + 2);
  CHECK_EQ(int61_ss, V86_SS);
  CHECK_EQ(int61_sp, V86_SP);
  CHECK_EQ(int61_ds, V86_DS);
  CHECK_EQ(int61_hds, 0);
  CHECK_EQ(res16(R_B_INT61_AX), 42);
  printf("refused out with IOPL 3: port 0x%x value 0x%x (#GP %u)\n", out_port, out_value, gp_out);
  CHECK_EQ(out_value, 0x43);
  CHECK_EQ(gp_out, 2);
  printf("timer interrupts taken in v8086 mode: at least 3: %s\n", ticks_from_v86 >= 3 ? "yes" : "no");
  CHECK(ticks_from_v86 >= 3);

  /* ---- a v8086 task entered by a task switch */
  v86_tss.eip = off(v86_part_c);
  v86_tss.eflags = EFL_VM | 0x2;
  v86_tss.esp = V86_SP;
  v86_tss.cs = V86_CS;
  v86_tss.ss = V86_SS;
  v86_tss.ds = v86_tss.es = v86_tss.fs = v86_tss.gs = 0;
  v86_tss.ss0 = SEL_KDATA;
  v86_tss.esp0 = rt_tss.esp0;
  v86_tss.iomap = sizeof(struct tss);
  const unsigned hlt_before = gp_hlt;
  if (ctx_save(&v86_ctx) == 0)
    __asm__ volatile("ljmp $0x38, $0");
  uint16_t tr;
  __asm__ volatile("str %w0" : "=r"(tr));
  printf("task switch into v8086 mode: ran with CS 0x%x, ended by hlt %s, TR 0x%x\n", res16(R_C_SWITCHED),
         gp_hlt == hlt_before + 1 ? "yes" : "no", tr);
  CHECK_EQ(res16(R_C_SWITCHED), V86_CS);
  CHECK_EQ(gp_hlt, hlt_before + 1);
  CHECK_EQ(tr, SEL_V86TSS);
  rt_finish();
}
