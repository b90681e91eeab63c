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
static size_t N=(1UL<<31);
volatile int sink;
// one "matrix" = rows x R codes bytes; scales S bytes per row, biases S bytes per row.
// mode 2: sections (codes | scales | biases) per matrix; mode 3: per 8-row block (codes | scales | biases)
static int mode,W=1; static size_t R=1024,S=64,ROWSM=768;
static __m512i run(uint8_t*b,size_t len){
  __m512i a4[4]={0}; __m512i acc=_mm512_setzero_si512(), m=_mm512_set1_epi8(15), x=_mm512_set1_epi8(3);
  size_t mat=ROWSM*(R+2*S), blk=8*(R+2*S);
  for(size_t mo=0;mo+mat<=len;mo+=mat){
    uint8_t*M=b+mo;
    for(size_t bi=0;bi<ROWSM/8;bi++){
      uint8_t *codes,*sc,*bs; size_t rstride;
      if(mode==2){codes=M+bi*8*R; sc=M+ROWSM*R+bi*8*S; bs=M+ROWSM*(R+S)+bi*8*S; }
      else {codes=M+bi*blk; sc=codes+8*R; bs=sc+8*S;}
      // prefetch next block scales
      for(size_t o=0;o<8*S;o+=64){ size_t nb=(mode==2)?8*S:blk; _mm_prefetch((char*)sc+nb+o,_MM_HINT_T0);_mm_prefetch((char*)bs+nb+o,_MM_HINT_T0);}
      for(size_t o=0;o<8*S;o+=64){ acc=_mm512_add_epi32(acc,_mm512_loadu_si512(sc+o)); acc=_mm512_add_epi32(acc,_mm512_loadu_si512(bs+o)); }
      size_t nextc=(mode==2)?8*R:blk;
      for(size_t s=0;s<R;s+=64){
        for(int r=0;r<8;r++){
          uint8_t*p=codes+r*R+s;
          _mm_prefetch((char*)p+nextc, _MM_HINT_T1);
          __m512i c=_mm512_loadu_si512(p);
          __m512i lo=_mm512_and_si512(c,m);
          for(int w=0;w<W;w++){ a4[w&3]=_mm512_dpbusd_epi32(a4[w&3],lo,x); a4[(w+1)&3]=_mm512_add_epi32(a4[(w+1)&3],_mm512_shuffle_i64x2(lo,lo,0x4e)); lo=_mm512_srli_epi16(lo,1);}
        }
      }
    }
  }
  return _mm512_add_epi32(acc,_mm512_add_epi32(_mm512_add_epi32(a4[0],a4[1]),_mm512_add_epi32(a4[2],a4[3])));
}
struct A{uint8_t*b;size_t len;};
static void*th(void*a_){struct A*a=a_;__m512i r=run(a->b,a->len);int v[16];_mm512_storeu_si512(v,r);sink=v[0];return 0;}
int main(int argc,char**argv){
  int threads=atoi(argv[1]);mode=atoi(argv[2]);R=atol(argv[3]);S=atol(argv[4]);ROWSM=atol(argv[5]); if(argc>6)W=atoi(argv[6]); if(argc>7)N=atol(argv[7]);
  uint8_t*b=mmap(0,N,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);madvise(b,N,MADV_HUGEPAGE);memset(b,1,N);
  double best=0;
  for(int rep=0;rep<(N<(1UL<<30)?3000:5);rep++){
    pthread_t t[8];struct A a[8];double t0=now();
    for(int i=0;i<threads;i++){a[i]=(struct A){b+i*(N/threads),N/threads};pthread_create(&t[i],0,th,&a[i]);}
    for(int i=0;i<threads;i++)pthread_join(t[i],0);
    double g=N/(now()-t0)/1e9; if(g>best)best=g;
  }
  printf("threads %d mode %d R %zu S %zu rows %zu W %d N %zu: %.2f GB/s\n",threads,mode,R,S,ROWSM,W,N,best);
}
