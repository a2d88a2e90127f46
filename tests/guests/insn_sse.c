/* insn (part 2): SSE/SSE2 after enabling CR4.OSFXSR.  Packed integer ops are
 * checked lane by lane against C reference models on pseudo-random inputs;
 * floating-point ops against exactly representable hand-computed results. */
#include "rt.h"

typedef union { uint8_t b[16]; int8_t sb[16]; uint16_t w[8]; int16_t sw[8]; uint32_t d[4]; int32_t sd[4];
                uint64_t q[2]; float f[4]; double g[2]; } v128;

static uint32_t rng = 0x9e3779b9;
static uint32_t rnd(void)
{
  rng ^= rng << 13;
  rng ^= rng >> 17;
  rng ^= rng << 5;
  return rng;
}
static uint8_t sat_u8(int v) { return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v; }
static int8_t sat_s8(int v) { return v < -128 ? -128 : v > 127 ? 127 : (int8_t)v; }
static int16_t sat_s16(int v) { return v < -32768 ? -32768 : v > 32767 ? 32767 : (int16_t)v; }


#define PBIN(name, insn) \
  static void name(v128 *r, const v128 *a, const v128 *b) \
  { __asm__ volatile("movdqu (%1), %%xmm0\n\tmovdqu (%2), %%xmm1\n\t" insn " %%xmm1, %%xmm0\n\tmovdqu %%xmm0, (%0)" \
                     : : "r"(r), "r"(a), "r"(b) : "memory"); }
PBIN(x_paddb, "paddb") PBIN(x_paddw, "paddw") PBIN(x_paddd, "paddd") PBIN(x_paddq, "paddq")
PBIN(x_psubb, "psubb") PBIN(x_psubd, "psubd") PBIN(x_paddusb, "paddusb") PBIN(x_psubusb, "psubusb")
PBIN(x_paddsw, "paddsw") PBIN(x_psubsb, "psubsb") PBIN(x_pmullw, "pmullw") PBIN(x_pmulhw, "pmulhw")
PBIN(x_pmulhuw, "pmulhuw") PBIN(x_pmuludq, "pmuludq") PBIN(x_pmaddwd, "pmaddwd") PBIN(x_pand, "pand")
PBIN(x_pandn, "pandn") PBIN(x_por, "por") PBIN(x_pxor, "pxor") PBIN(x_pcmpeqb, "pcmpeqb")
PBIN(x_pcmpgtw, "pcmpgtw") PBIN(x_pcmpgtd, "pcmpgtd") PBIN(x_pmaxub, "pmaxub") PBIN(x_pminsw, "pminsw")
PBIN(x_pavgb, "pavgb") PBIN(x_psadbw, "psadbw") PBIN(x_packsswb, "packsswb") PBIN(x_packuswb, "packuswb")
PBIN(x_packssdw, "packssdw") PBIN(x_punpcklbw, "punpcklbw") PBIN(x_punpckhwd, "punpckhwd")
PBIN(x_punpckldq, "punpckldq") PBIN(x_punpckhqdq, "punpckhqdq")

static void m_paddb(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 16; i++) r->b[i] = (uint8_t)(a->b[i] + b->b[i]); }
static void m_paddw(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 8; i++) r->w[i] = (uint16_t)(a->w[i] + b->w[i]); }
static void m_paddd(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 4; i++) r->d[i] = a->d[i] + b->d[i]; }
static void m_paddq(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 2; i++) r->q[i] = a->q[i] + b->q[i]; }
static void m_psubb(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 16; i++) r->b[i] = (uint8_t)(a->b[i] - b->b[i]); }
static void m_psubd(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 4; i++) r->d[i] = a->d[i] - b->d[i]; }
static void m_paddusb(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 16; i++) r->b[i] = sat_u8(a->b[i] + b->b[i]); }
static void m_psubusb(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 16; i++) r->b[i] = sat_u8(a->b[i] - b->b[i]); }
static void m_paddsw(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 8; i++) r->sw[i] = sat_s16(a->sw[i] + b->sw[i]); }
static void m_psubsb(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 16; i++) r->sb[i] = sat_s8(a->sb[i] - b->sb[i]); }
static void m_pmullw(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 8; i++) r->w[i] = (uint16_t)(a->sw[i] * b->sw[i]); }
static void m_pmulhw(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 8; i++) r->w[i] = (uint16_t)((uint32_t)(a->sw[i] * b->sw[i]) >> 16); }
static void m_pmulhuw(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 8; i++) r->w[i] = (uint16_t)(((uint32_t)a->w[i] * b->w[i]) >> 16); }
static void m_pmuludq(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 2; i++) r->q[i] = (uint64_t)a->d[2 * i] * b->d[2 * i]; }
static void m_pmaddwd(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 4; i++) r->d[i] = (uint32_t)(a->sw[2 * i] * b->sw[2 * i]) + (uint32_t)(a->sw[2 * i + 1] * b->sw[2 * i + 1]); }
static void m_pand(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 4; i++) r->d[i] = a->d[i] & b->d[i]; }
static void m_pandn(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 4; i++) r->d[i] = ~a->d[i] & b->d[i]; }
static void m_por(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 4; i++) r->d[i] = a->d[i] | b->d[i]; }
static void m_pxor(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 4; i++) r->d[i] = a->d[i] ^ b->d[i]; }
static void m_pcmpeqb(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 16; i++) r->b[i] = a->b[i] == b->b[i] ? 0xff : 0; }
static void m_pcmpgtw(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 8; i++) r->w[i] = a->sw[i] > b->sw[i] ? 0xffff : 0; }
static void m_pcmpgtd(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 4; i++) r->d[i] = a->sd[i] > b->sd[i] ? 0xffffffffu : 0; }
static void m_pmaxub(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 16; i++) r->b[i] = a->b[i] > b->b[i] ? a->b[i] : b->b[i]; }
static void m_pminsw(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 8; i++) r->sw[i] = a->sw[i] < b->sw[i] ? a->sw[i] : b->sw[i]; }
static void m_pavgb(v128 *r, const v128 *a, const v128 *b) { for (int i = 0; i < 16; i++) r->b[i] = (uint8_t)((a->b[i] + b->b[i] + 1) >> 1); }
static void m_psadbw(v128 *r, const v128 *a, const v128 *b)
{
  for (int h = 0; h < 2; h++) {
    uint32_t s = 0;
    for (int i = 0; i < 8; i++) {
      int d = a->b[8 * h + i] - b->b[8 * h + i];
      s += (uint32_t)(d < 0 ? -d : d);
    }
    r->q[h] = s;
  }
}
static void m_packsswb(v128 *r, const v128 *a, const v128 *b) { v128 t; for (int i = 0; i < 8; i++) { t.sb[i] = sat_s8(a->sw[i]); t.sb[8 + i] = sat_s8(b->sw[i]); } *r = t; }
static void m_packuswb(v128 *r, const v128 *a, const v128 *b) { v128 t; for (int i = 0; i < 8; i++) { t.b[i] = sat_u8(a->sw[i]); t.b[8 + i] = sat_u8(b->sw[i]); } *r = t; }
static void m_packssdw(v128 *r, const v128 *a, const v128 *b) { v128 t; for (int i = 0; i < 4; i++) { t.sw[i] = sat_s16(a->sd[i]); t.sw[4 + i] = sat_s16(b->sd[i]); } *r = t; }
static void m_punpcklbw(v128 *r, const v128 *a, const v128 *b) { v128 t; for (int i = 0; i < 8; i++) { t.b[2 * i] = a->b[i]; t.b[2 * i + 1] = b->b[i]; } *r = t; }
static void m_punpckhwd(v128 *r, const v128 *a, const v128 *b) { v128 t; for (int i = 0; i < 4; i++) { t.w[2 * i] = a->w[4 + i]; t.w[2 * i + 1] = b->w[4 + i]; } *r = t; }
static void m_punpckldq(v128 *r, const v128 *a, const v128 *b) { v128 t; t.d[0] = a->d[0]; t.d[1] = b->d[0]; t.d[2] = a->d[1]; t.d[3] = b->d[1]; *r = t; }
static void m_punpckhqdq(v128 *r, const v128 *a, const v128 *b) { v128 t; t.q[0] = a->q[1]; t.q[1] = b->q[1]; *r = t; }


typedef void (*vop)(v128 *, const v128 *, const v128 *);
static const struct { const char *name; vop hw, model; } pops[] = {
#define P(n) { #n, x_##n, m_##n }
  P(paddb), P(paddw), P(paddd), P(paddq), P(psubb), P(psubd), P(paddusb), P(psubusb), P(paddsw), P(psubsb),
  P(pmullw), P(pmulhw), P(pmulhuw), P(pmuludq), P(pmaddwd), P(pand), P(pandn), P(por), P(pxor), P(pcmpeqb),
  P(pcmpgtw), P(pcmpgtd), P(pmaxub), P(pminsw), P(pavgb), P(psadbw), P(packsswb), P(packuswb), P(packssdw),
  P(punpcklbw), P(punpckhwd), P(punpckldq), P(punpckhqdq),
#undef P
};

static void gen(v128 *v, int style)
{
  for (int i = 0; i < 4; i++) {
    uint32_t x = rnd();
    if (style == 1) x &= 0x80ff80ff;    /* many extremes */
    if (style == 2) x |= 0x7f007f00;
    v->d[i] = x;
  }
}

void test_sse(void)
{
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  if (!(d & (1u << 24)) || !(d & (1u << 25)) || !(d & (1u << 26))) {
    printf("SSE/SSE2: not supported by this CPU, skipped\n");
    return;
  }
  write_cr0((read_cr0() & ~(CR0_EM | CR0_TS)) | CR0_MP);
  write_cr4(read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT);
  uint32_t mxcsr;
  __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
  CHECK_EQ(mxcsr, 0x1f80);

  int n = 0, fails = 0;
  for (unsigned k = 0; k < sizeof pops / sizeof pops[0]; k++)
    for (int it = 0; it < 60; it++) {
      v128 x, y, r, e;
      gen(&x, it % 3);
      gen(&y, (it / 3) % 3);
      pops[k].hw(&r, &x, &y);
      pops[k].model(&e, &x, &y);
      n++;
      if (memcmp(&r, &e, 16)) {
        if (fails++ < 10)
          printf("FAIL %s: a=%08x%08x%08x%08x b=%08x%08x%08x%08x got %08x%08x%08x%08x want %08x%08x%08x%08x\n",
                 pops[k].name, x.d[3], x.d[2], x.d[1], x.d[0], y.d[3], y.d[2], y.d[1], y.d[0], r.d[3], r.d[2],
                 r.d[1], r.d[0], e.d[3], e.d[2], e.d[1], e.d[0]);
        rt_failures++;
      }
    }
  /* shuffles, shifts by immediate, movemask, movd/movq */
  v128 s = { .d = { 0x03020100, 0x07060504, 0x0b0a0908, 0x0f0e0d0c } }, r;
  __asm__ volatile("movdqu %1, %%xmm2\n\tpshufd $0x1b, %%xmm2, %%xmm3\n\tmovdqu %%xmm3, %0" : "=m"(r) : "m"(s));
  CHECK(r.d[0] == 0x0f0e0d0c && r.d[1] == 0x0b0a0908 && r.d[2] == 0x07060504 && r.d[3] == 0x03020100);
  __asm__ volatile("movdqu %1, %%xmm2\n\tpshuflw $0xe4, %%xmm2, %%xmm2\n\tpshufhw $0x00, %%xmm2, %%xmm2\n\t"
                   "movdqu %%xmm2, %0" : "=m"(r) : "m"(s));
  CHECK(r.d[0] == 0x03020100 && r.d[1] == 0x07060504 && r.d[2] == 0x09080908 && r.d[3] == 0x09080908);
  __asm__ volatile("movdqu %1, %%xmm2\n\tpslldq $3, %%xmm2\n\tmovdqu %%xmm2, %0" : "=m"(r) : "m"(s));
  CHECK(r.d[0] == 0x00000000 && r.d[1] == 0x04030201 && r.d[3] == 0x0c0b0a09);
  CHECK_EQ(r.b[0] | r.b[1] | r.b[2], 0);
  CHECK_EQ(r.b[3], 0x00);
  __asm__ volatile("movdqu %1, %%xmm2\n\tpsrldq $5, %%xmm2\n\tmovdqu %%xmm2, %0" : "=m"(r) : "m"(s));
  CHECK(r.d[0] == 0x08070605 && r.d[2] == 0x000f0e0d && r.d[3] == 0);
  v128 w = { .w = { 0x8001, 0x7fff, 0x0001, 0xffff, 0x1234, 0x8000, 0x4000, 0x0002 } };
  __asm__ volatile("movdqu %1, %%xmm2\n\tpsraw $1, %%xmm2\n\tmovdqu %%xmm2, %0" : "=m"(r) : "m"(w));
  CHECK(r.w[0] == 0xc000 && r.w[1] == 0x3fff && r.w[3] == 0xffff && r.w[5] == 0xc000 && r.w[7] == 0x0001);
  __asm__ volatile("movdqu %1, %%xmm2\n\tpsrlw $15, %%xmm2\n\tmovdqu %%xmm2, %0" : "=m"(r) : "m"(w));
  CHECK(r.w[0] == 1 && r.w[1] == 0 && r.w[3] == 1 && r.w[5] == 1 && r.w[6] == 0);
  __asm__ volatile("movdqu %1, %%xmm2\n\tpsllq $4, %%xmm2\n\tmovdqu %%xmm2, %0" : "=m"(r) : "m"(s));
  CHECK(r.q[0] == 0x7060504030201000ull && r.q[1] == 0xf0e0d0c0b0a09080ull);
  __asm__ volatile("movdqu %1, %%xmm2\n\tpsrad $40, %%xmm2\n\tmovdqu %%xmm2, %0" : "=m"(r) : "m"(w)); /* count>31: sign fill */
  CHECK(r.d[0] == 0x00000000 && r.d[1] == 0xffffffff && r.d[2] == 0xffffffff && r.d[3] == 0x00000000);
  uint32_t mask;
  v128 mm = { .b = { 0x80, 1, 0xff, 0x7f, 0, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc0 } };
  __asm__ volatile("movdqu %1, %%xmm4\n\tpmovmskb %%xmm4, %0" : "=r"(mask) : "m"(mm));
  CHECK_EQ(mask, 0x8025);
  uint32_t g = 0;
  __asm__ volatile("movd %1, %%xmm5\n\tpshufd $0, %%xmm5, %%xmm5\n\tpsrlq $32, %%xmm5\n\tmovd %%xmm5, %0"
                   : "=r"(g) : "r"(0xdeadbeef));
  CHECK_EQ(g, 0xdeadbeef);
  uint64_t q64 = 0;
  static const uint64_t q_in = 0x0123456789abcdefull;
  __asm__ volatile("movq %1, %%xmm6\n\tmovq %%xmm6, %0" : "=m"(q64) : "m"(q_in));
  CHECK_EQ(q64, q_in);

  /* single / double precision arithmetic (exactly representable results) */
  static const float fa[4] = { 1.5f, 2.25f, -3.0f, 100.0f }, fb[4] = { 0.5f, 0.25f, 1.0f, -50.0f };
  static const float fadd[4] = { 2.0f, 2.5f, -2.0f, 50.0f }, fmul[4] = { 0.75f, 0.5625f, -3.0f, -5000.0f };
  float fr[4];
  __asm__ volatile("movups %1, %%xmm0\n\tmovups %2, %%xmm1\n\taddps %%xmm1, %%xmm0\n\tmovups %%xmm0, %0"
                   : "=m"(fr) : "m"(fa), "m"(fb));
  CHECK(!memcmp(fr, fadd, 16));
  __asm__ volatile("movups %1, %%xmm0\n\tmulps %2, %%xmm0\n\tmovups %%xmm0, %0" : "=m"(fr) : "m"(fa), "m"(fb));
  CHECK(!memcmp(fr, fmul, 16));
  static const float fsq[4] = { 4.0f, 2.25f, 0.0625f, 1e6f }, fsr[4] = { 2.0f, 1.5f, 0.25f, 1000.0f };
  __asm__ volatile("sqrtps %1, %%xmm0\n\tmovups %%xmm0, %0" : "=m"(fr) : "m"(fsq));
  CHECK(!memcmp(fr, fsr, 16));
  static const double da[2] = { 1.5, -2.0 }, db[2] = { 4.0, 0.25 }, dmul[2] = { 6.0, -0.5 }, ddiv[2] = { 0.375, -8.0 };
  double dr[2];
  __asm__ volatile("movupd %1, %%xmm0\n\tmovupd %2, %%xmm1\n\tmulpd %%xmm1, %%xmm0\n\tmovupd %%xmm0, %0"
                   : "=m"(dr) : "m"(da), "m"(db));
  CHECK(!memcmp(dr, dmul, 16));
  __asm__ volatile("movupd %1, %%xmm0\n\tmovupd %2, %%xmm1\n\tdivpd %%xmm1, %%xmm0\n\tmovupd %%xmm0, %0"
                   : "=m"(dr) : "m"(da), "m"(db));
  CHECK(!memcmp(dr, ddiv, 16));
  static const double third = 1.0 / 3.0;
  double x3;
  __asm__ volatile("movsd %1, %%xmm0\n\taddsd %%xmm0, %%xmm0\n\taddsd %1, %%xmm0\n\tmovsd %%xmm0, %0"
                   : "=m"(x3) : "m"(third));
  uint64_t u3;
  memcpy(&u3, &x3, 8);
  CHECK_EQ(u3, 0x3ff0000000000000ull); /* 3 * (1/3) rounds to exactly 1.0 */
  /* min/max/compare */
  static const float mx[4] = { 1.5f, 2.25f, 1.0f, 100.0f };
  __asm__ volatile("movups %1, %%xmm0\n\tmaxps %2, %%xmm0\n\tmovups %%xmm0, %0" : "=m"(fr) : "m"(fa), "m"(fb));
  CHECK(!memcmp(fr, mx, 16));
  v128 cm;
  __asm__ volatile("movups %1, %%xmm0\n\tcmpltps %2, %%xmm0\n\tmovdqu %%xmm0, %0" : "=m"(cm) : "m"(fa), "m"(fb));
  CHECK(cm.d[0] == 0 && cm.d[1] == 0 && cm.d[2] == 0xffffffff && cm.d[3] == 0);
  uint32_t fo;
  __asm__ volatile("movss %1, %%xmm0\n\tcomiss %2, %%xmm0\n\tpushfl\n\tpopl %0" : "=r"(fo) : "m"(fa[2]), "m"(fb[2]) : "cc");
  CHECK_EQ(fo & (EFL_ZF | EFL_PF | EFL_CF), EFL_CF); /* -3 < 1 */

  /* conversions */
  int32_t i32;
  static const double m275 = -2.75, p25 = 2.5, p35 = 3.5;
  __asm__ volatile("cvttsd2si %1, %0" : "=r"(i32) : "m"(m275));
  CHECK_EQ(i32, -2);
  __asm__ volatile("cvtsd2si %1, %0" : "=r"(i32) : "m"(p25));
  CHECK_EQ(i32, 2); /* round to nearest even */
  __asm__ volatile("cvtsd2si %1, %0" : "=r"(i32) : "m"(p35));
  CHECK_EQ(i32, 4);
  double cd;
  __asm__ volatile("cvtsi2sd %1, %%xmm0\n\tmovsd %%xmm0, %0" : "=m"(cd) : "r"(-7));
  CHECK(cd == -7.0);
  static const float f2[2] = { 1.5f, -0.25f };
  double d2[2];
  __asm__ volatile("movq %1, %%xmm0\n\tcvtps2pd %%xmm0, %%xmm1\n\tmovupd %%xmm1, %0" : "=m"(d2) : "m"(f2));
  CHECK(d2[0] == 1.5 && d2[1] == -0.25);
  static const int32_t di[4] = { 1, -2, 3, 1 << 24 };
  static const float df[4] = { 1.0f, -2.0f, 3.0f, 16777216.0f };
  __asm__ volatile("movdqu %1, %%xmm0\n\tcvtdq2ps %%xmm0, %%xmm0\n\tmovups %%xmm0, %0" : "=m"(fr) : "m"(di));
  CHECK(!memcmp(fr, df, 16));
  static const float tf[4] = { 1.9f, -1.9f, 2.5e9f, 0.5f };
  v128 ti;
  __asm__ volatile("movups %1, %%xmm0\n\tcvttps2dq %%xmm0, %%xmm0\n\tmovdqu %%xmm0, %0" : "=m"(ti) : "m"(tf));
  CHECK(ti.sd[0] == 1 && ti.sd[1] == -1 && ti.d[2] == 0x80000000u && ti.sd[3] == 0);
  static const double sd1 = 0.1;
  float sf1;
  __asm__ volatile("cvtsd2ss %1, %%xmm0\n\tmovss %%xmm0, %0" : "=m"(sf1) : "m"(sd1));
  uint32_t sfb;
  memcpy(&sfb, &sf1, 4);
  CHECK_EQ(sfb, 0x3dcccccd);

  /* fxsave / fxrstor round trip of xmm state and MXCSR */
  static uint8_t area[512] __attribute__((aligned(16)));
  static const v128 pat = { .d = { 0x11111111, 0x22222222, 0x33333333, 0x44444444 } };
  v128 back;
  __asm__ volatile("movdqu %1, %%xmm7\n\tfxsave %2\n\tpxor %%xmm7, %%xmm7\n\tfxrstor %2\n\tmovdqu %%xmm7, %0"
                   : "=m"(back) : "m"(pat), "m"(area) : "memory");
  CHECK(!memcmp(&back, &pat, 16));
  uint32_t saved_mxcsr;
  memcpy(&saved_mxcsr, area + 24, 4);
  CHECK_EQ(saved_mxcsr, 0x1f80 | 0x21); /* sticky IE (cvttps2dq 2.5e9) and PE (inexact ops) */
  printf("SSE/SSE2: %d packed-integer cases (%u ops), shuffles/shifts/movmsk, ps/pd arithmetic, conversions, fxsave\n",
         n, (unsigned)(sizeof pops / sizeof pops[0]));
}
