#define _GNU_SOURCE
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <stdint.h>
#include <pthread.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static int VAR=0; static int ROWSM=768, COLS=2048, G, PF=2, NOSCALE=0, NOPF=0, PFS=1;
static size_t MAT;
static int8_t xq[8192]; static float xd[128], xs[128];
static inline __m512i reduce_rows_512(__m512i*a){
#define P32(x,y) _mm512_add_epi32(_mm512_unpacklo_epi32(x,y),_mm512_unpackhi_epi32(x,y))
#define P64(x,y) _mm512_add_epi32(_mm512_unpacklo_epi64(x,y),_mm512_unpackhi_epi64(x,y))
  __m512i t0=P64(P32(a[0],a[1]),P32(a[2],a[3]));
  __m512i t1=P64(P32(a[4],a[5]),P32(a[6],a[7]));
  __m512i w=_mm512_add_epi32(_mm512_shuffle_i64x2(t0,t1,0x88),_mm512_shuffle_i64x2(t0,t1,0xdd));
  return _mm512_shuffle_i64x2(w,w,0xd8);
}
static void prepare(uint16_t*sc[8], float*s){
  static int16_t LOW[32],HIGH[32]; static int init=0;
  if(!init){for(int i=0;i<32;i++){int g=i/8,r=i%8;LOW[i]=r<4?8*r+g:32+8*(r-4)+g;HIGH[i]=r<4?8*r+g+4:32+8*(r-4)+g+4;}init=1;}
  __m512i lo=_mm512_loadu_si512(LOW),hi=_mm512_loadu_si512(HIGH);
  for(int k0=0;k0<G;k0+=8){
    __mmask8 m=(1u<<((G-k0)<8?(G-k0):8))-1;
    __m128i l[8]; for(int r=0;r<8;r++) l[r]=_mm_maskz_loadu_epi16(m,sc[r]+k0);
    __m512i a=_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(l[0]),l[1],1)),_mm256_inserti128_si256(_mm256_castsi128_si256(l[2]),l[3],1),1);
    __m512i b=_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(l[4]),l[5],1)),_mm256_inserti128_si256(_mm256_castsi128_si256(l[6]),l[7],1),1);
    __m512i r0=_mm512_permutex2var_epi16(a,lo,b), r1=_mm512_permutex2var_epi16(a,hi,b);
    float*at=s+k0*8;
    _mm512_storeu_ps(at,_mm512_cvtph_ps(_mm512_castsi512_si256(r0)));
    _mm512_storeu_ps(at+16,_mm512_cvtph_ps(_mm512_extracti64x4_epi64(r0,1)));
    _mm512_storeu_ps(at+32,_mm512_cvtph_ps(_mm512_castsi512_si256(r1)));
    _mm512_storeu_ps(at+48,_mm512_cvtph_ps(_mm512_extracti64x4_epi64(r1,1)));
  }
}
static inline __m512 halves(float a,float b){return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(a)),_mm256_set1_ps(b),1);}
static float matvec(uint8_t*M, float*out){
  size_t cl=COLS/2; uint8_t*codes=M; uint16_t*scales=(uint16_t*)(M+ROWSM*cl); uint16_t*biases=scales+ROWSM*G;
  float s[1024],b[1024]; __m512i m=_mm512_set1_epi8(15);
  float tot=0; int inter=getenv("INTER")!=0;
  for(int r0=0;r0<ROWSM;r0+=8){
    uint8_t*c[8]; uint16_t*sc[8],*bs[8];
    for(int r=0;r<8;r++){c[r]=codes+(r0+r)*cl;sc[r]=scales+(r0+r)*G;bs[r]=biases+(r0+r)*G;}
    if(PFS) for(int o=0;o<8*G*2;o+=64){_mm_prefetch((char*)sc[0]+8*G*2+o,_MM_HINT_T0);_mm_prefetch((char*)bs[0]+8*G*2+o,_MM_HINT_T0);}
    if(!NOSCALE){prepare(sc,s);prepare(bs,b);}
    size_t ahead=PF*8*cl;
    __m512 f[4]={_mm512_setzero_ps(),_mm512_setzero_ps(),_mm512_setzero_ps(),_mm512_setzero_ps()};
    for(int j=0;j<G/2;j++){int k=2*j;
      if(!NOPF && !inter) for(int r=0;r<8;r++) _mm_prefetch((char*)c[r]+ahead+k*32,_MM_HINT_T1);
      __m512i z0,z1; if(VAR>=5){z0=m;z1=m;} else {z0=_mm512_loadu_si512(xq+k*64);z1=_mm512_loadu_si512(xq+k*64+64);}
      __m512i qe=_mm512_shuffle_i64x2(z0,z1,0x44),qo=_mm512_shuffle_i64x2(z0,z1,0xee);
      __m512i acc[8];
      for(int r=0;r<8;r++){ if(inter) _mm_prefetch((char*)c[r]+ahead+k*32,_MM_HINT_T1); __m512i cc= _mm512_loadu_si512(c[r]+k*32);__m512i lo=_mm512_and_si512(cc,m),hi=_mm512_and_si512(_mm512_srli_epi16(cc,4),m);
        if(VAR==2) acc[r]=_mm512_add_epi32(lo,hi); else
        acc[r]=_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(),lo,qe),hi,qo);}
      __m512i is;
      if(VAR>=1){ is=_mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(acc[0],acc[1]),_mm512_add_epi32(acc[2],acc[3])),_mm512_add_epi32(_mm512_add_epi32(acc[4],acc[5]),_mm512_add_epi32(acc[6],acc[7]))); }
      else is=reduce_rows_512(acc);
      if(VAR>=3){ f[0]=_mm512_add_ps(f[0],_mm512_castsi512_ps(is)); continue; }
      __m512 S=_mm512_loadu_ps(s+k*8),B=_mm512_loadu_ps(b+k*8);
      __m512 t1=_mm512_mul_ps(_mm512_mul_ps(S,halves(xd[k],xd[k+1])),_mm512_cvtepi32_ps(is));
      f[j%4]=_mm512_add_ps(_mm512_add_ps(f[j%4],t1),_mm512_mul_ps(B,halves(xs[k],xs[k+1])));
    }
    __m512 cc=_mm512_add_ps(_mm512_add_ps(f[0],f[2]),_mm512_add_ps(f[1],f[3]));
    __m256 v=_mm256_add_ps(_mm512_castps512_ps256(cc),_mm512_extractf32x8_ps(cc,1));
    _mm256_storeu_ps(out+r0,v);
  }
  return tot;
}
struct A{uint8_t*b;size_t n;int reps;};
static void*th(void*a_){struct A*a=a_;static __thread float out[16384];for(int rep=0;rep<a->reps;rep++)for(size_t i=0;i<a->n;i++)matvec(a->b+i*MAT,out);return 0;}
int main(int argc,char**argv){
  int threads=atoi(argv[1]); size_t total=atol(argv[2]); ROWSM=atoi(argv[3]);COLS=atoi(argv[4]);
  if(argc>5)PF=atoi(argv[5]); if(argc>6)NOSCALE=atoi(argv[6]); if(argc>7)NOPF=atoi(argv[7]); if(argc>8)PFS=atoi(argv[8]); if(argc>9)VAR=atoi(argv[9]);
  G=COLS/64; MAT=((size_t)ROWSM*COLS/2+ROWSM*G*4+4095)/4096*4096;
  size_t n=total/MAT; if(n<threads)n=threads; size_t N=n*MAT;
  uint8_t*b=mmap(0,N,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);madvise(b,N,MADV_HUGEPAGE);
  for(size_t i=0;i<N;i++)b[i]=(i*2654435761u)>>13; for(size_t i=0;i<N/2;i+=2) ((uint16_t*)b)[i]&=0x3bff;
  for(int i=0;i<8192;i++)xq[i]=i%7; for(int i=0;i<128;i++){xd[i]=0.01;xs[i]=1;}
  int reps = total<(64<<20)? (int)((1UL<<30)/N) : 1;
  double best=0;
  for(int rep=0;rep<5;rep++){
    pthread_t t[8];struct A a[8];double t0=now(); size_t per=n/threads;
    for(int i=0;i<threads;i++){a[i]=(struct A){b+i*per*MAT,per,reps};pthread_create(&t[i],0,th,&a[i]);}
    for(int i=0;i<threads;i++)pthread_join(t[i],0);
    double g=(double)per*threads*MAT*reps/(now()-t0)/1e9; if(g>best)best=g;
  }
  printf("threads %d %zu MB of %dx%d pf %d noscale %d nopf %d: %.2f GB/s\n",threads,N>>20,ROWSM,COLS,PF,NOSCALE,NOPF,best);
}
