/* insn: integer ALU/flags, shifts/rotates, mul/div, string ops, BCD, bit ops,
 * cmov/setcc, atomics, x87; SSE/SSE2 in insn_sse.c.  Expected values come from
 * C reference models of the architectural definitions (SDM pseudo-code) or
 * from hand-computed constants, never from the instruction under test. */
#include "rt.h"

void test_sse(void);
static uint32_t rng = 0x2545f491;
static uint32_t rnd(void)
{
  rng ^= rng << 13;
  rng ^= rng >> 17;
  rng ^= rng << 5;
  return rng;
}
static const uint32_t edge[] = { 0, 1, 2, 0xf, 0x10, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff,
                                 0x10000, 0x7fffffff, 0x80000000, 0x80000001, 0xfffffffe, 0xffffffff,
                                 0x12345678, 0xdeadbeef };
#define NEDGE (sizeof edge / sizeof edge[0])
#define FMASK (EFL_CF | EFL_PF | EFL_AF | EFL_ZF | EFL_SF | EFL_OF)

static uint32_t pf_of(uint32_t r)
{
  r &= 0xff;
  r ^= r >> 4;
  r ^= r >> 2;
  r ^= r >> 1;
  return (r & 1) ? 0 : EFL_PF;
}
static uint32_t szp(uint32_t r, int bits)
{
  uint32_t m = bits == 32 ? 0xffffffffu : (1u << bits) - 1;
  uint32_t f = pf_of(r);
  if (!(r & m)) f |= EFL_ZF;
  if ((r >> (bits - 1)) & 1) f |= EFL_SF;
  return f;
}
/* ---------------------------------------------------------------- ALU */
enum { OP_ADD, OP_ADC, OP_SUB, OP_SBB, OP_AND, OP_OR, OP_XOR, OP_CMP, OP_TEST, OP_INC, OP_DEC, OP_NEG, OP_NOT, NOPS };
static const char *const opname[NOPS] = { "add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test", "inc", "dec", "neg", "not" };

/* reference model: returns result, *f = flags (only defined bits), *m = defined-flag mask */
static uint32_t model(int op, int bits, uint32_t a, uint32_t b, uint32_t fin, uint32_t *f, uint32_t *m)
{
  uint32_t mask = bits == 32 ? 0xffffffffu : (1u << bits) - 1, sign = 1u << (bits - 1);
  uint32_t cin = fin & EFL_CF, r = 0, fl = 0;
  uint64_t wide;
  a &= mask;
  b &= mask;
  *m = FMASK;
  switch (op) {
  case OP_ADD: case OP_ADC: case OP_INC:
    if (op == OP_ADD) cin = 0;
    if (op == OP_INC) { b = 1; cin = 0; }
    wide = (uint64_t)a + b + cin;
    r = (uint32_t)wide & mask;
    if (wide > mask) fl |= EFL_CF;
    if ((a ^ r) & (b ^ r) & sign) fl |= EFL_OF;
    if ((a ^ b ^ r) & 0x10) fl |= EFL_AF;
    if (op == OP_INC) fl = (fl & ~EFL_CF) | (fin & EFL_CF);
    break;
  case OP_SUB: case OP_SBB: case OP_CMP: case OP_DEC: case OP_NEG:
    if (op != OP_SBB) cin = 0;
    if (op == OP_DEC) b = 1;
    if (op == OP_NEG) { b = a; a = 0; }
    r = (a - b - cin) & mask;
    if ((uint64_t)b + cin > a) fl |= EFL_CF;
    if ((a ^ b) & (a ^ r) & sign) fl |= EFL_OF;
    if ((a ^ b ^ r) & 0x10) fl |= EFL_AF;
    if (op == OP_DEC) fl = (fl & ~EFL_CF) | (fin & EFL_CF);
    if (op == OP_CMP) { fl |= szp(r, bits); *f = fl; return a; }
    break;
  case OP_AND: case OP_TEST: r = a & b; *m = FMASK & ~EFL_AF; break;
  case OP_OR: r = a | b; *m = FMASK & ~EFL_AF; break;
  case OP_XOR: r = a ^ b; *m = FMASK & ~EFL_AF; break;
  case OP_NOT: *f = fin & FMASK; return ~a & mask; /* flags unaffected */
  }
  fl |= szp(r, bits);
  *f = fl;
  return op == OP_TEST ? a : r;
}

#define BIN32(insn) \
  __asm__ volatile("pushl %[fi]\n\tpopfl\n\t" insn " %[b], %[a]\n\tpushfl\n\tpopl %[fo]" \
                   : [a] "+r"(a), [fo] "=&r"(fo) : [b] "r"(b), [fi] "r"(fin) : "cc")
#define UN32(insn) \
  __asm__ volatile("pushl %[fi]\n\tpopfl\n\t" insn " %[a]\n\tpushfl\n\tpopl %[fo]" \
                   : [a] "+r"(a), [fo] "=&r"(fo) : [fi] "r"(fin) : "cc")
#define BIN8(insn) \
  __asm__ volatile("pushl %[fi]\n\tpopfl\n\t" insn " %b[b], %b[a]\n\tpushfl\n\tpopl %[fo]" \
                   : [a] "+q"(a), [fo] "=&r"(fo) : [b] "q"(b), [fi] "r"(fin) : "cc")
#define BIN16(insn) \
  __asm__ volatile("pushl %[fi]\n\tpopfl\n\t" insn " %w[b], %w[a]\n\tpushfl\n\tpopl %[fo]" \
                   : [a] "+r"(a), [fo] "=&r"(fo) : [b] "r"(b), [fi] "r"(fin) : "cc")

static uint32_t run_alu(int op, int bits, uint32_t a, uint32_t b, uint32_t fin, uint32_t *f)
{
  uint32_t fo = 0;
  fin |= 2;
  if (bits == 32) {
    switch (op) {
    case OP_ADD: BIN32("addl"); break;
    case OP_ADC: BIN32("adcl"); break;
    case OP_SUB: BIN32("subl"); break;
    case OP_SBB: BIN32("sbbl"); break;
    case OP_AND: BIN32("andl"); break;
    case OP_OR: BIN32("orl"); break;
    case OP_XOR: BIN32("xorl"); break;
    case OP_CMP: BIN32("cmpl"); break;
    case OP_TEST: BIN32("testl"); break;
    case OP_INC: UN32("incl"); break;
    case OP_DEC: UN32("decl"); break;
    case OP_NEG: UN32("negl"); break;
    case OP_NOT: UN32("notl"); break;
    }
  } else if (bits == 16) {
    switch (op) {
    case OP_ADD: BIN16("addw"); break;
    case OP_ADC: BIN16("adcw"); break;
    case OP_SUB: BIN16("subw"); break;
    case OP_SBB: BIN16("sbbw"); break;
    default: return 0;
    }
    a &= 0xffff;
  } else {
    switch (op) {
    case OP_ADD: BIN8("addb"); break;
    case OP_ADC: BIN8("adcb"); break;
    case OP_SUB: BIN8("subb"); break;
    case OP_SBB: BIN8("sbbb"); break;
    case OP_CMP: BIN8("cmpb"); break;
    case OP_XOR: BIN8("xorb"); break;
    default: return 0;
    }
    a &= 0xff;
  }
  *f = fo;
  return a;
}

static int alu_fail;
static void alu_case(int op, int bits, uint32_t a, uint32_t b, uint32_t fin, int *n)
{
  uint32_t ef, m, f = 0;
  uint32_t er = model(op, bits, a, b, fin, &ef, &m);
  uint32_t r = run_alu(op, bits, a, b, fin, &f);
  (*n)++;
  if (r != er || (f & m) != (ef & m)) {
    if (alu_fail++ < 10)
      printf("FAIL alu %s/%d a=%08x b=%08x fin=%03x: got %08x f=%03x want %08x f=%03x\n", opname[op], bits, a, b,
             fin, r, f & m, er, ef & m);
    rt_failures++;
  }
}
static void test_alu(void)
{
  int n = 0;
  static const struct { int op, bits; } ops[] = {
    { OP_ADD, 32 }, { OP_ADC, 32 }, { OP_SUB, 32 }, { OP_SBB, 32 }, { OP_AND, 32 }, { OP_OR, 32 }, { OP_XOR, 32 },
    { OP_CMP, 32 }, { OP_TEST, 32 }, { OP_INC, 32 }, { OP_DEC, 32 }, { OP_NEG, 32 }, { OP_NOT, 32 },
    { OP_ADD, 16 }, { OP_ADC, 16 }, { OP_SUB, 16 }, { OP_SBB, 16 },
    { OP_ADD, 8 }, { OP_ADC, 8 }, { OP_SUB, 8 }, { OP_SBB, 8 }, { OP_CMP, 8 }, { OP_XOR, 8 },
  };
  for (unsigned k = 0; k < sizeof ops / sizeof ops[0]; k++) {
    for (unsigned i = 0; i < NEDGE; i++)
      for (unsigned j = 0; j < NEDGE; j++)
        for (uint32_t c = 0; c < 2; c++)
          alu_case(ops[k].op, ops[k].bits, edge[i], edge[j], c ? FMASK : 0, &n);
    for (int i = 0; i < 300; i++) {
      uint32_t a = rnd(), b = rnd(), f = rnd() & FMASK;
      alu_case(ops[k].op, ops[k].bits, a, b, f, &n);
    }
  }
  /* hand-computed spot checks */
  uint32_t f;
  CHECK_EQ(run_alu(OP_ADD, 32, 0xffffffff, 1, 0, &f), 0);
  CHECK_EQ(f & FMASK, EFL_CF | EFL_ZF | EFL_AF | EFL_PF);
  CHECK_EQ(run_alu(OP_SUB, 32, 0x80000000, 1, 0, &f), 0x7fffffff);
  CHECK_EQ(f & FMASK, EFL_OF | EFL_AF | EFL_PF);
  CHECK_EQ(run_alu(OP_ADC, 8, 0x7f, 0x00, EFL_CF, &f), 0x80);
  CHECK_EQ(f & FMASK, EFL_OF | EFL_SF | EFL_AF);
  printf("alu: %d cases (add adc sub sbb and or xor cmp test inc dec neg not; 8/16/32-bit)\n", n);
}

/* ---------------------------------------------------------------- shifts */
enum { SH_SHL, SH_SHR, SH_SAR, SH_ROL, SH_ROR, SH_RCL, SH_RCR, NSH };
static const char *const shname[NSH] = { "shl", "shr", "sar", "rol", "ror", "rcl", "rcr" };
static uint32_t shift_model(int op, uint32_t a, uint32_t cnt, uint32_t fin, uint32_t *f, uint32_t *m)
{
  uint32_t c = cnt & 31, r = a, cf = 0, of = 0;
  *f = fin & FMASK;
  *m = FMASK;
  if (c == 0)
    return a;
  switch (op) {
  case SH_SHL: r = a << c; cf = (a >> (32 - c)) & 1; of = (r >> 31) ^ cf; break;
  case SH_SHR: r = a >> c; cf = (a >> (c - 1)) & 1; of = a >> 31; break;
  case SH_SAR: r = (uint32_t)((int32_t)a >> c); cf = ((int32_t)a >> (c - 1)) & 1; of = 0; break;
  case SH_ROL: r = (a << c) | (a >> ((32 - c) & 31)); cf = r & 1; of = (r >> 31) ^ cf; break;
  case SH_ROR: r = (a >> c) | (a << ((32 - c) & 31)); cf = r >> 31; of = (r >> 31) ^ ((r >> 30) & 1); break;
  case SH_RCL: case SH_RCR: {
    uint64_t v = ((uint64_t)(fin & EFL_CF) << 32) | a; /* 33-bit value */
    uint32_t k = op == SH_RCL ? c : 33 - c;
    v = ((v << k) | (v >> (33 - k))) & 0x1ffffffffull;
    r = (uint32_t)v;
    cf = (uint32_t)(v >> 32) & 1;
    of = op == SH_RCL ? (r >> 31) ^ cf : (r >> 31) ^ ((r >> 30) & 1);
    break;
  }
  }
  uint32_t fl = (cf ? EFL_CF : 0) | (of ? EFL_OF : 0);
  if (op <= SH_SAR) {
    fl |= szp(r, 32);
    *m &= ~EFL_AF; /* undefined for shifts */
  } else {
    fl |= fin & (EFL_SF | EFL_ZF | EFL_PF | EFL_AF); /* rotates leave them alone */
  }
  if (c != 1)
    *m &= ~EFL_OF;
  *f = fl;
  return r;
}
#define SH32(insn) \
  __asm__ volatile("pushl %[fi]\n\tpopfl\n\t" insn " %%cl, %[a]\n\tpushfl\n\tpopl %[fo]" \
                   : [a] "+r"(a), [fo] "=&r"(fo) : "c"(cnt), [fi] "r"(fin) : "cc")
static uint32_t run_shift(int op, uint32_t a, uint32_t cnt, uint32_t fin, uint32_t *f)
{
  uint32_t fo;
  fin |= 2;
  switch (op) {
  case SH_SHL: SH32("shll"); break;
  case SH_SHR: SH32("shrl"); break;
  case SH_SAR: SH32("sarl"); break;
  case SH_ROL: SH32("roll"); break;
  case SH_ROR: SH32("rorl"); break;
  case SH_RCL: SH32("rcll"); break;
  default: SH32("rcrl"); break;
  }
  *f = fo;
  return a;
}
static void test_shifts(void)
{
  static const uint32_t counts[] = { 0, 1, 2, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 255 };
  int n = 0, fails = 0;
  for (int op = 0; op < NSH; op++)
    for (unsigned i = 0; i < NEDGE + 40; i++)
      for (unsigned k = 0; k < sizeof counts / sizeof counts[0]; k++)
        for (uint32_t fin = 0; fin <= FMASK; fin += FMASK) {
          uint32_t a = i < NEDGE ? edge[i] : rnd(), ef, m, f;
          uint32_t er = shift_model(op, a, counts[k], fin, &ef, &m);
          uint32_t r = run_shift(op, a, counts[k], fin, &f);
          n++;
          if (r != er || (f & m) != (ef & m)) {
            if (fails++ < 10)
              printf("FAIL %s a=%08x cnt=%u fin=%03x: got %08x f=%03x want %08x f=%03x\n", shname[op], a,
                     counts[k], fin, r, f & m, er, ef & m);
            rt_failures++;
          }
        }
  /* immediate and by-one encodings, 8/16-bit forms: hand-computed */
  uint32_t x = 0x81, y = 0x8001, z = 0x80000001u;
  __asm__("shlb $1, %b0; rolw $4, %w1; sarl $31, %2" : "+q"(x), "+r"(y), "+r"(z) : : "cc");
  CHECK_EQ(x, 0x02);
  CHECK_EQ(y, 0x0018);
  CHECK_EQ(z, 0xffffffff);
  uint32_t lo = 0x12345678, hi = 0x9abcdef0;
  __asm__("shldl $8, %1, %0" : "+r"(hi) : "r"(lo) : "cc");
  CHECK_EQ(hi, 0xbcdef012);
  lo = 0x12345678; hi = 0x9abcdef0;
  __asm__("shrdl $12, %1, %0" : "+r"(lo) : "r"(hi) : "cc");
  CHECK_EQ(lo, 0xef012345);
  printf("shifts/rotates: %d cases (shl shr sar rol ror rcl rcr, counts 0..255)\n", n);
}

/* ---------------------------------------------------------------- mul/div */
static void test_muldiv(void)
{
  int n = 0;
  for (unsigned i = 0; i < NEDGE + 100; i++)
    for (unsigned j = 0; j < NEDGE + 1; j++) {
      uint32_t a = i < NEDGE ? edge[i] : rnd(), b = j < NEDGE ? edge[j] : rnd(), lo, hi, fo;
      __asm__("mull %[b]\n\tpushfl\n\tpopl %[f]" : "=a"(lo), "=d"(hi), [f] "=r"(fo) : "a"(a), [b] "r"(b) : "cc");
      uint64_t p = (uint64_t)a * b;
      CHECK_EQ(((uint64_t)hi << 32) | lo, p);
      CHECK_EQ(fo & (EFL_CF | EFL_OF), hi ? (EFL_CF | EFL_OF) : 0);
      __asm__("imull %[b]\n\tpushfl\n\tpopl %[f]" : "=a"(lo), "=d"(hi), [f] "=r"(fo) : "a"(a), [b] "r"(b) : "cc");
      int64_t sp = (int64_t)(int32_t)a * (int32_t)b;
      CHECK_EQ(((uint64_t)hi << 32) | lo, (uint64_t)sp);
      uint32_t ovf = sp != (int64_t)(int32_t)sp ? (EFL_CF | EFL_OF) : 0;
      CHECK_EQ(fo & (EFL_CF | EFL_OF), ovf);
      uint32_t t = a;
      __asm__("imull %[b], %[t]\n\tpushfl\n\tpopl %[f]" : [t] "+r"(t), [f] "=r"(fo) : [b] "r"(b) : "cc");
      CHECK_EQ(t, (uint32_t)sp);
      CHECK_EQ(fo & (EFL_CF | EFL_OF), ovf);
      __asm__("imull $-3, %[b], %[t]" : [t] "=r"(t) : [b] "r"(b) : "cc");
      CHECK_EQ(t, (uint32_t)((int32_t)b * -3));
      if (b) {
        /* 64/32 unsigned with hi < divisor */
        uint32_t dhi = a % b, q, rm;
        uint64_t dividend = ((uint64_t)dhi << 32) | (a ^ 0x5a5a5a5a);
        __asm__("divl %[b]" : "=a"(q), "=d"(rm) : "a"((uint32_t)dividend), "d"(dhi), [b] "r"(b) : "cc");
        CHECK_EQ(q, dividend / b);
        CHECK_EQ(rm, dividend % b);
        /* signed 32/32 (sign-extended), skipping the INT_MIN/-1 overflow */
        if (!(a == 0x80000000u && b == 0xffffffffu)) {
          __asm__("cltd\n\tidivl %[b]" : "=a"(q), "=d"(rm) : "a"(a), [b] "r"(b) : "cc");
          CHECK_EQ(q, (uint32_t)((int32_t)a / (int32_t)b));
          CHECK_EQ(rm, (uint32_t)((int32_t)a % (int32_t)b));
        }
      }
      n++;
    }
  /* hand-computed 64/32 and narrow forms */
  uint32_t q, r;
  __asm__("divl %[b]" : "=a"(q), "=d"(r) : "a"(0x00000005u), "d"(0x00000002u), [b] "r"(3u) : "cc");
  CHECK_EQ(q, 0xaaaaaaac); /* 0x200000005 / 3 */
  CHECK_EQ(r, 1);
  __asm__("idivl %[b]" : "=a"(q), "=d"(r) : "a"(0xfffffff9u), "d"(0xffffffffu), [b] "r"(2u) : "cc");
  CHECK_EQ(q, (uint32_t)-3);
  CHECK_EQ(r, (uint32_t)-1);
  __asm__("idivl %[b]" : "=a"(q), "=d"(r) : "a"(7u), "d"(0u), [b] "r"((uint32_t)-2) : "cc");
  CHECK_EQ(q, (uint32_t)-3);
  CHECK_EQ(r, 1);
  uint32_t ax = 1000;
  __asm__("divb %b1" : "+a"(ax) : "q"(7) : "cc");
  CHECK_EQ(ax & 0xffff, (6u << 8) | 142u);
  ax = 0xfff9; /* -7 */
  __asm__("idivb %b1" : "+a"(ax) : "q"(2) : "cc");
  CHECK_EQ(ax & 0xffff, 0xfffd); /* rem -1, quot -3 */
  uint32_t dx = 0x0001;
  ax = 0x0000;
  __asm__("divw %w2" : "+a"(ax), "+d"(dx) : "r"(0x100) : "cc");
  CHECK_EQ(ax & 0xffff, 0x100);
  CHECK_EQ(dx & 0xffff, 0);
  ax = 200;
  __asm__("mulb %b1" : "+a"(ax) : "q"(3) : "cc");
  CHECK_EQ(ax & 0xffff, 600);
  ax = 0xff80; /* al = -128 */
  __asm__("imulb %b1" : "+a"(ax) : "q"(-2) : "cc");
  CHECK_EQ(ax & 0xffff, 256);
  printf("mul/imul/div/idiv: %d operand pairs + narrow forms\n", n);
}

/* ---------------------------------------------------------------- strings */
static void test_strings(void)
{
  static char src[64], dst[64];
  for (int i = 0; i < 64; i++)
    src[i] = (char)('A' + i % 26), dst[i] = 0;
  void *s = src, *d = dst;
  uint32_t c = 37;
  __asm__ volatile("cld; rep movsb" : "+S"(s), "+D"(d), "+c"(c) : : "memory");
  CHECK_EQ(c, 0);
  CHECK_EQ((char *)s - src, 37);
  CHECK_EQ((char *)d - dst, 37);
  CHECK(!memcmp(dst, src, 37) && dst[37] == 0);
  /* backward dword copy */
  static uint32_t ws[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, wd[8];
  s = &ws[6];
  d = &wd[6];
  c = 5;
  __asm__ volatile("std; rep movsl; cld" : "+S"(s), "+D"(d), "+c"(c) : : "memory");
  CHECK_EQ((uint32_t *)s - ws, 1);
  CHECK_EQ((uint32_t *)d - wd, 1);
  CHECK(wd[0] == 0 && wd[1] == 0 && wd[2] == 3 && wd[6] == 7 && wd[7] == 0);
  /* overlapping forward byte copy replicates (byte-at-a-time semantics) */
  static char ov[16] = "xyz.............";
  s = ov;
  d = ov + 1;
  c = 10;
  __asm__ volatile("cld; rep movsb" : "+S"(s), "+D"(d), "+c"(c) : : "memory");
  CHECK(!memcmp(ov, "xxxxxxxxxxx.....", 16));
  /* overlapping dword copy, distance 1 dword */
  static uint32_t ow[6] = { 9, 8, 7, 6, 5, 4 };
  s = ow;
  d = ow + 1;
  c = 4;
  __asm__ volatile("cld; rep movsl" : "+S"(s), "+D"(d), "+c"(c) : : "memory");
  CHECK(ow[0] == 9 && ow[1] == 9 && ow[4] == 9 && ow[5] == 4);
  /* stos forward (dword) and backward (byte) */
  static uint32_t fill[5];
  d = fill;
  c = 4;
  __asm__ volatile("cld; rep stosl" : "+D"(d), "+c"(c) : "a"(0xa5a5f00d) : "memory");
  CHECK(fill[0] == 0xa5a5f00d && fill[3] == 0xa5a5f00d && fill[4] == 0);
  static char fb[8] = "abcdefg";
  d = fb + 5;
  c = 3;
  __asm__ volatile("std; rep stosb; cld" : "+D"(d), "+c"(c) : "a"('Z') : "memory");
  CHECK(!memcmp(fb, "abcZZZg", 8));
  CHECK_EQ((char *)d - fb, 2);
  /* repe cmpsb stops after the first mismatch */
  const char *a1 = "hello world", *a2 = "hello wOrld";
  const void *p1 = a1, *p2 = a2;
  uint32_t fo;
  c = 11;
  __asm__ volatile("cld; repe cmpsb; pushfl; popl %3" : "+S"(p1), "+D"(p2), "+c"(c), "=r"(fo) : : "memory", "cc");
  CHECK_EQ(c, 3);
  CHECK_EQ((const char *)p1 - a1, 8);
  CHECK_EQ(fo & (EFL_ZF | EFL_CF), 0); /* 'o' > 'O' */
  /* repne scasb finds the byte */
  const void *p3 = a1;
  c = 11;
  __asm__ volatile("cld; repne scasb; pushfl; popl %2" : "+D"(p3), "+c"(c), "=r"(fo) : "a"('w') : "memory", "cc");
  CHECK_EQ(c, 4);
  CHECK_EQ((const char *)p3 - a1, 7);
  CHECK(fo & EFL_ZF);
  /* rep with ecx=0 does nothing, lodsl loads and advances */
  s = src;
  d = dst;
  c = 0;
  __asm__ volatile("rep movsb" : "+S"(s), "+D"(d), "+c"(c) : : "memory");
  CHECK(s == src && d == dst);
  uint32_t v;
  s = ws;
  __asm__ volatile("cld; lodsl; lodsl" : "=a"(v), "+S"(s) : : "memory");
  CHECK_EQ(v, 2);
  CHECK_EQ((uint32_t *)s - ws, 2);
  printf("string ops: movs/stos/cmps/scas/lods, rep/repe/repne, both directions, overlap\n");
}

/* ---------------------------------------------------------------- BCD */
enum { B_DAA, B_DAS, B_AAA, B_AAS };
static void bcd_model(int op, uint32_t ax, uint32_t fin, uint32_t *rax, uint32_t *rf, uint32_t *m)
{
  uint32_t al = ax & 0xff, ah = (ax >> 8) & 0xff, cf = fin & EFL_CF, af = fin & EFL_AF, f = 0;
  if (op == B_DAA || op == B_DAS) {
    uint32_t old_al = al;
    if ((al & 0xf) > 9 || af) {
      if (op == B_DAA) { if (al + 6 > 0xff) cf = 1; al = (al + 6) & 0xff; }
      else { if (al < 6) cf = 1; al = (al - 6) & 0xff; }
      f |= EFL_AF;
    }
    if (old_al > 0x99 || (fin & EFL_CF)) {
      al = op == B_DAA ? (al + 0x60) & 0xff : (al - 0x60) & 0xff;
      cf = 1;
    } else if (op == B_DAA) {
      cf = 0;
    }
    f |= (cf ? EFL_CF : 0) | szp(al, 8);
    *m = EFL_CF | EFL_AF | EFL_SF | EFL_ZF | EFL_PF;
    *rax = (ax & 0xff00) | al;
  } else {
    uint32_t x = ax & 0xffff;
    if ((al & 0xf) > 9 || af) {
      if (op == B_AAA) x = (x + 0x106) & 0xffff;
      else { x = (x - 6) & 0xffff; x = (x - 0x100) & 0xffff; }
      f = EFL_AF | EFL_CF;
    }
    x &= 0xff0f;
    (void)ah;
    *m = EFL_CF | EFL_AF;
    *rax = x;
  }
  *rf = f;
}
static void test_bcd(void)
{
  int n = 0, fails = 0;
  for (int op = 0; op < 4; op++)
    for (uint32_t v = 0; v < 256; v++)
      for (uint32_t fl = 0; fl < 4; fl++) {
        uint32_t fin = 2 | (fl & 1 ? EFL_CF : 0) | (fl & 2 ? EFL_AF : 0);
        uint32_t ax = (((v * 37) & 0xff) << 8) | v, fo, m, erax, ef;
        uint32_t r = ax;
        switch (op) {
        case B_DAA: __asm__("pushl %2; popfl; daa; pushfl; popl %1" : "+a"(r), "=r"(fo) : "r"(fin) : "cc"); break;
        case B_DAS: __asm__("pushl %2; popfl; das; pushfl; popl %1" : "+a"(r), "=r"(fo) : "r"(fin) : "cc"); break;
        case B_AAA: __asm__("pushl %2; popfl; aaa; pushfl; popl %1" : "+a"(r), "=r"(fo) : "r"(fin) : "cc"); break;
        default: __asm__("pushl %2; popfl; aas; pushfl; popl %1" : "+a"(r), "=r"(fo) : "r"(fin) : "cc"); break;
        }
        bcd_model(op, ax, fin, &erax, &ef, &m);
        n++;
        if ((r & 0xffff) != erax || (fo & m) != (ef & m)) {
          if (fails++ < 10)
            printf("FAIL bcd op%d ax=%04x fin=%03x: got %04x f=%03x want %04x f=%03x\n", op, ax, fin, r & 0xffff,
                   fo & m, erax, ef & m);
          rt_failures++;
        }
      }
  /* aam/aad with several bases */
  for (uint32_t v = 0; v < 256; v++) {
    uint32_t r = 0x1200 | v, fo;
    __asm__("aam\n\tpushfl\n\tpopl %1" : "+a"(r), "=r"(fo) : : "cc");
    CHECK_EQ(r & 0xffff, ((v / 10) << 8) | (v % 10));
    CHECK_EQ(fo & (EFL_ZF | EFL_SF | EFL_PF), szp(v % 10, 8));
    r = v;
    __asm__(".byte 0xd4, 16" : "+a"(r) : : "cc");
    CHECK_EQ(r & 0xffff, ((v >> 4) << 8) | (v & 15));
    r = (v << 8) | 0x07;
    __asm__("aad\n\tpushfl\n\tpopl %1" : "+a"(r), "=r"(fo) : : "cc");
    CHECK_EQ(r & 0xffff, (v * 10 + 7) & 0xff);
    CHECK_EQ(fo & (EFL_ZF | EFL_SF | EFL_PF), szp((v * 10 + 7) & 0xff, 8));
    r = (v << 8) | 0x03;
    __asm__(".byte 0xd5, 7" : "+a"(r) : : "cc");
    CHECK_EQ(r & 0xffff, (v * 7 + 3) & 0xff);
    n += 4;
  }
  /* classic hand examples */
  uint32_t r = 0x0000 | (0x79 + 0x35); /* 0xae */
  __asm__("pushl $2; popfl; daa" : "+a"(r) : : "cc");
  CHECK_EQ(r & 0xff, 0x14); /* 79 + 35 = 114 */
  printf("BCD: %d cases (daa das aaa aas aam aad)\n", n);
}

/* ---------------------------------------------------------------- bit ops */
static void test_bitops(void)
{
  uint32_t fo, v;
  for (uint32_t bit = 0; bit < 64; bit += 3) {
    uint32_t x = 0x5a5a5a5a, cf;
    v = x;
    __asm__("btl %[b], %[v]; setc %b[c]" : [c] "=q"(cf) : [v] "r"(v), [b] "r"(bit) : "cc");
    CHECK_EQ(cf & 1, (x >> (bit & 31)) & 1);
    v = x;
    __asm__("btsl %[b], %[v]; setc %b[c]" : [c] "=q"(cf), [v] "+r"(v) : [b] "r"(bit) : "cc");
    CHECK_EQ(v, x | (1u << (bit & 31)));
    CHECK_EQ(cf & 1, (x >> (bit & 31)) & 1);
    v = x;
    __asm__("btrl %[b], %[v]; setc %b[c]" : [c] "=q"(cf), [v] "+r"(v) : [b] "r"(bit) : "cc");
    CHECK_EQ(v, x & ~(1u << (bit & 31)));
    v = x;
    __asm__("btcl %[b], %[v]; setc %b[c]" : [c] "=q"(cf), [v] "+r"(v) : [b] "r"(bit) : "cc");
    CHECK_EQ(v, x ^ (1u << (bit & 31)));
  }
  /* memory bit strings: register offsets address beyond the dword (also negative) */
  static uint32_t bits[6];
  uint32_t *base = &bits[2], cf;
  __asm__ volatile("btsl %1, %0" : "+m"(*base) : "r"(70) : "cc", "memory");
  CHECK_EQ(bits[4], 1u << 6);
  __asm__ volatile("btsl %1, %0" : "+m"(*base) : "r"(-1) : "cc", "memory");
  CHECK_EQ(bits[1], 0x80000000u);
  __asm__ volatile("btcl %1, %0" : "+m"(*base) : "r"(-33) : "cc", "memory");
  CHECK_EQ(bits[0], 0x80000000u);
  __asm__ volatile("btl %2, %1; setc %b0" : "=q"(cf) : "m"(*base), "r"(70) : "cc", "memory");
  CHECK_EQ(cf & 1, 1);
  __asm__ volatile("btrl %2, %1; setc %b0" : "=q"(cf), "+m"(*base) : "r"(70) : "cc", "memory");
  CHECK_EQ(cf & 1, 1);
  CHECK_EQ(bits[4], 0);
  /* immediate offset is taken modulo the operand size */
  __asm__ volatile("btsl $35, %0" : "+m"(*base) : : "cc", "memory");
  CHECK_EQ(bits[2], 8);
  CHECK_EQ(bits[3], 0);
  /* bsf / bsr */
  static const struct { uint32_t v, f, r; } bs[] = {
    { 1, 0, 0 }, { 0x80000000, 31, 31 }, { 0x00f00000, 20, 23 }, { 0x12345678, 3, 28 }, { 0xffffffff, 0, 31 },
  };
  for (unsigned i = 0; i < sizeof bs / sizeof bs[0]; i++) {
    uint32_t f, r;
    __asm__("bsfl %2, %0; pushfl; popl %1" : "=r"(f), "=r"(fo) : "r"(bs[i].v) : "cc");
    CHECK_EQ(f, bs[i].f);
    CHECK(!(fo & EFL_ZF));
    __asm__("bsrl %1, %0" : "=r"(r) : "r"(bs[i].v) : "cc");
    CHECK_EQ(r, bs[i].r);
  }
  __asm__("bsfl %2, %0; pushfl; popl %1" : "=r"(v), "=r"(fo) : "r"(0) : "cc");
  CHECK(fo & EFL_ZF);
  v = 0x12345678;
  __asm__("bswap %0" : "+r"(v));
  CHECK_EQ(v, 0x78563412);
  v = 0x12345678;
  __asm__("xchgb %b0, %h0" : "+Q"(v));
  CHECK_EQ(v, 0x12347856);
  /* movzx/movsx */
  uint32_t zx, sx;
  __asm__("movzbl %b2, %0; movsbl %b2, %1" : "=&r"(zx), "=&r"(sx) : "q"(0x80) : );
  CHECK_EQ(zx, 0x80);
  CHECK_EQ(sx, 0xffffff80);
  __asm__("movzwl %w2, %0; movswl %w2, %1" : "=&r"(zx), "=&r"(sx) : "r"(0x8001) : );
  CHECK_EQ(zx, 0x8001);
  CHECK_EQ(sx, 0xffff8001);
  printf("bit ops: bt bts btr btc (reg/mem/imm), bsf bsr bswap, movzx/movsx\n");
}

/* ---------------------------------------------------------------- setcc/cmov */
static int cond_model(int cc, uint32_t f)
{
  int cf = !!(f & EFL_CF), zf = !!(f & EFL_ZF), sf = !!(f & EFL_SF), of = !!(f & EFL_OF), pf = !!(f & EFL_PF);
  int r;
  switch (cc >> 1) {
  case 0: r = of; break;
  case 1: r = cf; break;
  case 2: r = zf; break;
  case 3: r = cf || zf; break;
  case 4: r = sf; break;
  case 5: r = pf; break;
  case 6: r = sf != of; break;
  default: r = zf || (sf != of); break;
  }
  return (cc & 1) ? !r : r;
}
#define CC_CASE(n, cc) \
  case n: \
    __asm__("pushl %[f]\n\tpopfl\n\tset" cc " %b[s]\n\tcmov" cc " %[y], %[x]" \
            : [s] "=&q"(s), [x] "+r"(x) : [y] "r"(y), [f] "r"(f) : "cc"); \
    break;
static void test_cc(void)
{
  int n = 0;
  for (int cc = 0; cc < 16; cc++)
    for (uint32_t bits = 0; bits < 32; bits++) {
      uint32_t f = 2 | (bits & 1 ? EFL_CF : 0) | (bits & 2 ? EFL_ZF : 0) | (bits & 4 ? EFL_SF : 0) |
                   (bits & 8 ? EFL_OF : 0) | (bits & 16 ? EFL_PF : 0);
      uint32_t s = 0, x = 0xaaaa, y = 0x5555;
      switch (cc) {
        CC_CASE(0, "o") CC_CASE(1, "no") CC_CASE(2, "b") CC_CASE(3, "ae") CC_CASE(4, "e") CC_CASE(5, "ne")
        CC_CASE(6, "be") CC_CASE(7, "a") CC_CASE(8, "s") CC_CASE(9, "ns") CC_CASE(10, "p") CC_CASE(11, "np")
        CC_CASE(12, "l") CC_CASE(13, "ge") CC_CASE(14, "le") CC_CASE(15, "g")
      }
      int want = cond_model(cc, f);
      CHECK_EQ(s & 0xff, want);
      CHECK_EQ(x, want ? 0x5555 : 0xaaaa);
      n++;
    }
  /* jcc via C comparisons compiled to cmp/jcc on edge values, checked against 64-bit math */
  for (unsigned i = 0; i < NEDGE; i++)
    for (unsigned j = 0; j < NEDGE; j++) {
      uint32_t a = edge[i], b = edge[j];
      volatile uint32_t va = a, vb = b;
      CHECK_EQ(va < vb, (uint64_t)a < (uint64_t)b);
      CHECK_EQ((int32_t)va <= (int32_t)vb, (int64_t)(int32_t)a <= (int64_t)(int32_t)b);
    }
  printf("setcc/cmovcc: %d condition/flag combinations\n", n);
}

/* ---------------------------------------------------------------- atomics */
static void test_atomics(void)
{
  static volatile uint32_t mem;
  uint32_t r, fo;
  mem = 5;
  r = 9;
  __asm__ volatile("xchgl %0, %1" : "+r"(r), "+m"(mem) : : "memory");
  CHECK(r == 5 && mem == 9);
  /* cmpxchg success and failure */
  uint32_t eax = 9;
  __asm__ volatile("lock cmpxchgl %3, %1; pushfl; popl %2" : "+a"(eax), "+m"(mem), "=r"(fo) : "r"(77) : "cc", "memory");
  CHECK(mem == 77 && eax == 9 && (fo & EFL_ZF));
  eax = 1;
  __asm__ volatile("cmpxchgl %3, %1; pushfl; popl %2" : "+a"(eax), "+m"(mem), "=r"(fo) : "r"(88) : "cc", "memory");
  CHECK(mem == 77 && eax == 77 && !(fo & EFL_ZF));
  /* xadd */
  mem = 0xfffffff0;
  r = 0x20;
  __asm__ volatile("lock xaddl %0, %1; pushfl; popl %2" : "+r"(r), "+m"(mem), "=r"(fo) : : "cc", "memory");
  CHECK(r == 0xfffffff0 && mem == 0x10 && (fo & EFL_CF));
  /* cmpxchg8b */
  static volatile uint64_t q = 0x1122334455667788ull;
  uint32_t lo = 0x55667788, hi = 0x11223344;
  __asm__ volatile("lock cmpxchg8b %2; pushfl; popl %3"
                   : "+a"(lo), "+d"(hi), "+m"(q), "=r"(fo) : "b"(0xcafef00d), "c"(0x0badbeef) : "cc", "memory");
  CHECK(q == 0x0badbeefcafef00dull && (fo & EFL_ZF));
  lo = 1;
  hi = 2;
  __asm__ volatile("cmpxchg8b %2; pushfl; popl %3"
                   : "+a"(lo), "+d"(hi), "+m"(q), "=r"(fo) : "b"(0), "c"(0) : "cc", "memory");
  CHECK(q == 0x0badbeefcafef00dull && lo == 0xcafef00d && hi == 0x0badbeef && !(fo & EFL_ZF));
  /* lock inc / lock add / lock or on memory */
  mem = 1;
  __asm__ volatile("lock incl %0; lock addl $10, %0; lock orl $0x100, %0" : "+m"(mem) : : "cc", "memory");
  CHECK_EQ(mem, 0x10c);
  printf("atomics: xchg cmpxchg cmpxchg8b xadd lock-ops\n");
}

/* ---------------------------------------------------------------- x87 */
static uint64_t dbits(double d)
{
  uint64_t u;
  memcpy(&u, &d, 8);
  return u;
}
static void test_x87(void)
{
  uint16_t cw, sw;
  __asm__ volatile("fninit; fnstcw %0; fnstsw %1" : "=m"(cw), "=m"(sw));
  CHECK_EQ(cw, 0x037f);
  CHECK_EQ(sw, 0);
  static const double two = 2.0, three = 3.0, half = 0.5, ten = 10.0;
  double r;
  __asm__ volatile("fldl %1; fsqrt; fstpl %0" : "=m"(r) : "m"(two));
  CHECK_EQ(dbits(r), 0x3ff6a09e667f3bcdull); /* sqrt(2) */
  __asm__ volatile("fld1; fdivl %1; fstpl %0" : "=m"(r) : "m"(three)); /* 1/3 */
  CHECK_EQ(dbits(r), 0x3fd5555555555555ull);
  __asm__ volatile("fldl %1; fldl %2; faddp; fldl %3; fmulp; fstpl %0" : "=m"(r) : "m"(two), "m"(three), "m"(ten));
  CHECK_EQ(dbits(r), dbits(50.0));
  __asm__ volatile("fldl %1; fsubl %2; fabs; fchs; fstpl %0" : "=m"(r) : "m"(half), "m"(three));
  CHECK_EQ(dbits(r), dbits(-2.5));
  __asm__ volatile("fldpi; fstpl %0" : "=m"(r));
  CHECK_EQ(dbits(r), 0x400921fb54442d18ull);
  __asm__ volatile("fldl2t; fstpl %0" : "=m"(r));
  CHECK_EQ(dbits(r), 0x400a934f0979a371ull); /* log2(10) */
  __asm__ volatile("fldl %1; fsubl %2; fstpl %0" : "=m"(r) : "m"(three), "m"(ten)); /* 3-10 */
  CHECK_EQ(dbits(r), dbits(-7.0));
  __asm__ volatile("fldl %1; fldl %2; fxch; fstpl %0; fstp %%st(0)" : "=m"(r) : "m"(two), "m"(three));
  CHECK_EQ(dbits(r), dbits(2.0));
  /* fistp under the four rounding modes */
  static const double vals[] = { 2.5, -2.5, 3.5, 2.7, -2.7 };
  static const int32_t want[4][5] = {
    { 2, -2, 4, 3, -3 },  /* nearest even */
    { 2, -3, 3, 2, -3 },  /* down */
    { 3, -2, 4, 3, -2 },  /* up */
    { 2, -2, 3, 2, -2 },  /* truncate */
  };
  for (int rc = 0; rc < 4; rc++)
    for (int i = 0; i < 5; i++) {
      uint16_t ncw = (uint16_t)(0x037f | (rc << 10));
      int32_t out;
      __asm__ volatile("fldcw %2; fldl %1; fistpl %0; fldcw %3" : "=m"(out) : "m"(vals[i]), "m"(ncw), "m"(cw));
      CHECK_EQ(out, want[rc][i]);
    }
  /* 64-bit integer load/store */
  static const int64_t big = -1234567890123ll;
  int64_t bo;
  __asm__ volatile("fildll %1; fistpll %0" : "=m"(bo) : "m"(big));
  CHECK_EQ(bo, big);
  /* fcom: condition codes C3/C2/C0 */
  static const double nan_ = __builtin_nan("");
  static const struct { double a, b; uint16_t cc; uint32_t ef; } cmp[] = {
    { 3.0, 2.0, 0x0000, 0 }, { 2.0, 3.0, 0x0100, EFL_CF }, { 2.0, 2.0, 0x4000, EFL_ZF },
    { -0.0, 0.0, 0x4000, EFL_ZF },
  };
  for (unsigned i = 0; i < sizeof cmp / sizeof cmp[0]; i++) {
    uint32_t fo;
    __asm__ volatile("fldl %2; fldl %1; fcompp; fnstsw %0" : "=m"(sw) : "m"(cmp[i].a), "m"(cmp[i].b));
    CHECK_EQ(sw & 0x4500, cmp[i].cc);
    __asm__ volatile("fldl %2; fldl %1; fcomip %%st(1), %%st; fstp %%st(0); pushfl; popl %0"
                     : "=r"(fo) : "m"(cmp[i].a), "m"(cmp[i].b) : "cc");
    CHECK_EQ(fo & (EFL_ZF | EFL_PF | EFL_CF), cmp[i].ef);
  }
  uint32_t fo;
  __asm__ volatile("fnclex; fldl %2; fldl %1; fucompp; fnstsw %0" : "=m"(sw) : "m"(nan_), "m"(two));
  CHECK_EQ(sw & 0x4500, 0x4500);
  __asm__ volatile("fldl %2; fldl %1; fucomip %%st(1), %%st; fstp %%st(0); pushfl; popl %0"
                   : "=r"(fo) : "m"(nan_), "m"(two) : "cc");
  CHECK_EQ(fo & (EFL_ZF | EFL_PF | EFL_CF), EFL_ZF | EFL_PF | EFL_CF);
  /* division by zero sets ZE and yields infinity (masked) */
  static const double zero = 0.0;
  __asm__ volatile("fnclex; fldl %2; fdivl %3; fstpl %0; fnstsw %1" : "=m"(r), "=m"(sw) : "m"(two), "m"(zero));
  CHECK_EQ(dbits(r), 0x7ff0000000000000ull);
  CHECK(sw & 0x04);
  __asm__ volatile("fnclex; fninit");
  printf("x87: fld/fadd/fmul/fdiv/fsqrt/fchs/fabs/fxch, constants, fistp x4 rounding, fcom/fucomi, #Z masked\n");
}

int main(void)
{
  printf("insn guest\n");
  test_alu();
  test_shifts();
  test_muldiv();
  test_strings();
  test_bcd();
  test_bitops();
  test_cc();
  test_atomics();
  test_x87();
  test_sse();
  rt_finish();
}
