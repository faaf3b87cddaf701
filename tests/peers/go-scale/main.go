// Workload s of connect-bench, as a grpc-go client: N live NSM connections
// over M remotes, opened, refreshed in shuffled rounds, and closed, at a fixed
// concurrency. Prints one JSON line with connect-bench's field names.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"nsmpeer/api/connection"
	"nsmpeer/api/networkservice"
)

func rssKB() int64 {
	data, err := ioutil.ReadFile("/proc/self/status")
	if err != nil {
		panic(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	panic("no VmRSS")
}

func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// each runs op(k) for k in [0, n), concurrency at a time.
func each(n, concurrency int, op func(k int)) {
	var next int64 = -1
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(atomic.AddInt64(&next, 1))
				if k >= n {
					return
				}
				op(k)
			}
		}()
	}
	wg.Wait()
}

func percentile(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p + 0.999999)
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

func main() {
	remotesFile := flag.String("remotes", "", "file of tcp:// URLs")
	n := flag.Int("connections", 10000, "live connections")
	m := flag.Int("remotes-used", 0, "remotes used (all by default)")
	concurrency := flag.Int("concurrency", 64, "calls at a time")
	rounds := flag.Int("refresh-rounds", 1, "refreshes per connection")
	flag.Parse()

	f, err := os.Open(*remotesFile)
	if err != nil {
		panic(err)
	}
	var remotes []string
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line != "" {
			remotes = append(remotes, strings.TrimPrefix(line, "tcp://"))
		}
	}
	if *m == 0 {
		*m = len(remotes)
	}
	remotes = remotes[:*m]
	var errors int64
	zero := rssKB()

	opening := time.Now()
	clients := make([]networkservice.NetworkServiceClient, *m)
	conns := make([]*grpc.ClientConn, *m)
	for i, addr := range remotes {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		cc, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
		cancel()
		if err != nil {
			panic(err)
		}
		conns[i] = cc
		clients[i] = networkservice.NewNetworkServiceClient(cc)
	}
	live := make([]*connection.Connection, *n)
	open := func(k int) {
		request := &networkservice.NetworkServiceRequest{Connection: &connection.Connection{Id: fmt.Sprintf("s-%d", k)}}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		conn, err := clients[k%*m].Request(ctx, request)
		if err != nil {
			atomic.AddInt64(&errors, 1)
			return
		}
		live[k] = conn
	}
	each(*m, *concurrency, open)
	atClients := rssKB()
	each(*n-*m, *concurrency, func(j int) { open(*m + j) })
	openMs := float64(time.Since(opening).Microseconds()) / 1e3
	atN := rssKB()

	var mu sync.Mutex
	var took []int64
	cpuBefore := cpu()
	for r := 0; r < *rounds; r++ {
		order := rand.New(rand.NewSource(int64(r) + 1)).Perm(*n)
		each(*n, *concurrency, func(i int) {
			k := order[i]
			if live[k] == nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			started := time.Now()
			_, err := clients[k%*m].Request(ctx, &networkservice.NetworkServiceRequest{Connection: live[k]})
			elapsed := time.Since(started).Microseconds()
			if err != nil {
				atomic.AddInt64(&errors, 1)
				return
			}
			mu.Lock()
			took = append(took, elapsed)
			mu.Unlock()
		})
	}
	cpuUsed := cpu() - cpuBefore
	sort.Slice(took, func(a, b int) bool { return took[a] < took[b] })

	closing := time.Now()
	each(*n, *concurrency, func(k int) {
		if live[k] == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		// Invoked directly: this grpc-go's codec cannot decode the generated
		// emptypb.Empty, and Close's reply carries nothing.
		if err := conns[k%*m].Invoke(ctx, "/networkservice.NetworkService/Close", live[k], &emptyReply{}); err != nil {
			atomic.AddInt64(&errors, 1)
		}
	})
	closeMs := float64(time.Since(closing).Microseconds()) / 1e3
	for _, cc := range conns {
		cc.Close()
	}
	refreshes := *n * *rounds
	round1 := func(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }
	line := map[string]interface{}{
		"workload":             "s",
		"mode":                 "grpc-go",
		"connections":          *n,
		"remotes_used":         *m,
		"concurrency":          *concurrency,
		"rss_kb_at_zero":       zero,
		"rss_kb_at_clients":    atClients,
		"rss_kb_at_n":          atN,
		"bytes_per_connection": round1(float64(atN-atClients) * 1024 / float64(max(*n-*m, 1))),
		"bytes_per_client":     round1(float64(atClients-zero) * 1024 / float64(*m)),
		"refreshes":            refreshes,
		"refresh_p50_us":       percentile(took, 0.50),
		"refresh_p99_us":       percentile(took, 0.99),
		"cpu_us_per_refresh":   round1(float64(cpuUsed.Microseconds()) / float64(refreshes)),
		"open_ms":              round1(openMs),
		"close_ms":             round1(closeMs),
		"dials":                *m,
		"errors":               errors,
	}
	out, _ := json.Marshal(line)
	fmt.Println(string(out))
}

type emptyReply struct{}

func (*emptyReply) Reset()         {}
func (*emptyReply) String() string { return "" }
func (*emptyReply) ProtoMessage()  {}

func max(a, b int) int {
	if a > b {
		return a
	}
	return b
}
