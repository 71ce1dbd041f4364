// Operating gd-server: TLS and mutual TLS with certificates made at test time, bearer tokens
// (none, wrong, right; health stays open), the Prometheus endpoint, and per-request limits.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/gd_client.h"
#include "core/nn/model_bundle.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/sampler_service.h"
#include "server/security.h"
#include "tests/testing/testing.h"

namespace gd {
namespace {

namespace v1 = ::guided_diffusion::v1;
namespace fs = std::filesystem;

std::shared_ptr<ModelBundle> ParityModel() {
  static std::shared_ptr<ModelBundle> bundle = [] {
    auto loaded = LoadModelBundle(testing::Parity64().Spec(/*with_classifier=*/false),
                                  torch::kCPU, Precision::kFloat32);
    return loaded.ok() ? *loaded : nullptr;
  }();
  return bundle;
}

bool Sh(const std::string& command) { return std::system((command + " >/dev/null 2>&1").c_str()) == 0; }

// A CA, a server certificate for localhost/127.0.0.1, a client certificate from the same CA and
// one from another CA.
struct Pki {
  std::string dir;
  bool ok = false;
  std::string Path(const std::string& name) const { return dir + "/" + name; }
};

const Pki& MakePki() {
  static const Pki* pki = [] {
    auto* p = new Pki;
    p->dir = testing::TempDir("pki");
    const std::string d = p->dir;
    auto ca = [&](const std::string& name) {
      return Sh(absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=", name,
                             " -keyout ", d, "/", name, ".key -out ", d, "/", name, ".pem"));
    };
    auto leaf = [&](const std::string& name, const std::string& ca_name, const std::string& ext) {
      std::ofstream(d + "/" + name + ".ext") << ext << "\n";
      return Sh(absl::StrCat("openssl req -newkey rsa:2048 -nodes -subj /CN=", name, " -keyout ",
                             d, "/", name, ".key -out ", d, "/", name, ".csr")) &&
             Sh(absl::StrCat("openssl x509 -req -in ", d, "/", name, ".csr -CA ", d, "/",
                             ca_name, ".pem -CAkey ", d, "/", ca_name, ".key -CAcreateserial -days 2 -out ",
                             d, "/", name, ".pem -extfile ", d, "/", name, ".ext"));
    };
    p->ok = Sh("openssl version") && ca("ca") && ca("otherca") &&
            leaf("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1") &&
            leaf("client", "ca", "extendedKeyUsage=clientAuth") &&
            leaf("stranger", "otherca", "extendedKeyUsage=clientAuth");
    return p;
  }();
  return *pki;
}

class Served {
 public:
  Served(std::shared_ptr<grpc::ServerCredentials> credentials, server::ServiceOptions options,
         EngineOptions engine_options = {}) {
    registry_ = std::make_shared<server::ModelRegistry>();
    auto engine = Engine::Create(ParityModel(), engine_options);
    engine_ = std::shared_ptr<Engine>(std::move(*engine));
    registry_->Add(engine_, true);
    metrics_ = std::make_shared<server::Metrics>(registry_);
    auto metrics = metrics_;
    options.on_request_done = [metrics](const server::RequestRecord& r) {
      metrics->RequestFinished(r);
    };
    service_ = std::make_unique<server::SamplerService>(registry_, options);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", credentials, &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
  }
  ~Served() { server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5)); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  server::Metrics& metrics() { return *metrics_; }

 private:
  std::shared_ptr<server::ModelRegistry> registry_;
  std::shared_ptr<Engine> engine_;
  std::shared_ptr<server::Metrics> metrics_;
  std::unique_ptr<server::SamplerService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

v1::SampleRequest Quick() {
  v1::SampleRequest request;
  request.add_labels(1);
  request.set_timestep_respacing("ddim2");
  return request;
}

std::unique_ptr<client::SamplerClient> Client(client::ClientOptions options) {
  auto c = client::SamplerClient::Create(options);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GD_REQUIRE_PARITY_FIXTURES();
    ASSERT_NE(ParityModel(), nullptr);
  }
};

TEST_F(SecurityTest, TlsServesTlsClientsAndRefusesPlaintext) {
  const Pki& pki = MakePki();
  if (!pki.ok) GTEST_SKIP() << "openssl is not installed (scripts/install-deps.sh tls)";
  auto credentials = server::MakeServerCredentials({pki.Path("server.pem"), pki.Path("server.key"), ""});
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  Served served(*credentials, {});
  client::ClientOptions tls;
  tls.target = served.address();
  tls.tls = true;
  tls.tls_ca_file = pki.Path("ca.pem");
  EXPECT_TRUE(Client(tls)->Sample(Quick()).ok());
  client::ClientOptions plain;
  plain.target = served.address();
  plain.timeout_ms = 3000;
  EXPECT_FALSE(Client(plain)->Sample(Quick()).ok());
  client::ClientOptions wrong_ca = tls;
  wrong_ca.tls_ca_file = pki.Path("otherca.pem");
  wrong_ca.timeout_ms = 3000;
  EXPECT_EQ(Client(wrong_ca)->Sample(Quick()).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(SecurityTest, MutualTlsNeedsACertificateFromTheClientCa) {
  const Pki& pki = MakePki();
  if (!pki.ok) GTEST_SKIP() << "openssl is not installed (scripts/install-deps.sh tls)";
  auto credentials = server::MakeServerCredentials(
      {pki.Path("server.pem"), pki.Path("server.key"), pki.Path("ca.pem")});
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  Served served(*credentials, {});
  client::ClientOptions options;
  options.target = served.address();
  options.tls = true;
  options.tls_ca_file = pki.Path("ca.pem");
  options.timeout_ms = 5000;
  options.tls_cert_file = pki.Path("client.pem");
  options.tls_key_file = pki.Path("client.key");
  EXPECT_TRUE(Client(options)->Sample(Quick()).ok());
  options.tls_cert_file = pki.Path("stranger.pem");
  options.tls_key_file = pki.Path("stranger.key");
  EXPECT_FALSE(Client(options)->Sample(Quick()).ok()) << "a certificate from another CA";
  options.tls_cert_file.clear();
  options.tls_key_file.clear();
  EXPECT_FALSE(Client(options)->Sample(Quick()).ok()) << "no client certificate";
}

TEST_F(SecurityTest, CredentialFlagErrorsNameTheFlag) {
  auto half = server::MakeServerCredentials({"cert.pem", "", ""});
  EXPECT_NE(half.status().message().find("--tls_cert and --tls_key"), std::string::npos);
  auto missing = server::MakeServerCredentials({"/nonexistent/cert.pem", "/nonexistent/key", ""});
  EXPECT_NE(missing.status().message().find("--tls_cert"), std::string::npos);
  auto ca_only = server::MakeServerCredentials({"", "", "ca.pem"});
  EXPECT_FALSE(ca_only.ok());
}

TEST_F(SecurityTest, BearerTokensGuardTheSamplerButNotHealth) {
  const std::string dir = testing::TempDir("tokens");
  std::ofstream(dir + "/tokens") << "# operators\nfirst-token\n\n  second-token  \n";
  auto tokens = server::ReadAuthTokens(dir + "/tokens");
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ(*tokens, (std::vector<std::string>{"first-token", "second-token"}));
  std::ofstream(dir + "/empty") << "# nothing\n";
  EXPECT_FALSE(server::ReadAuthTokens(dir + "/empty").ok());
  server::ServiceOptions options;
  options.auth_tokens = *tokens;
  Served served(grpc::InsecureServerCredentials(), options);
  client::ClientOptions c;
  c.target = served.address();
  auto none = Client(c);
  EXPECT_EQ(none->Sample(Quick()).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(none->ListModels().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(*none->Health(), "SERVING") << "health stays open for probes";
  c.auth_token = "second-tokem";
  EXPECT_EQ(Client(c)->Sample(Quick()).status().code(), absl::StatusCode::kUnauthenticated);
  c.auth_token = "second-token-and-more";
  EXPECT_EQ(Client(c)->Sample(Quick()).status().code(), absl::StatusCode::kUnauthenticated);
  c.auth_token = "second-token";
  auto right = Client(c);
  EXPECT_TRUE(right->Sample(Quick()).ok());
  v1::SampleRequest stream_request = Quick();
  EXPECT_TRUE(right->StreamSample(stream_request, [](const v1::SampleEvent&) { return true; }).ok());
  fs::remove_all(dir);
}

TEST_F(SecurityTest, LimitsRefuseWithTheLimitNamed) {
  server::ServiceOptions options;
  options.max_concurrent_streams = 1;
  EngineOptions engine_options;
  engine_options.max_pixel_steps = 64 * 64 * 100;
  Served served(grpc::InsecureServerCredentials(), options, engine_options);
  client::ClientOptions c;
  c.target = served.address();
  auto client = Client(c);
  v1::SampleRequest big = Quick();
  big.set_timestep_respacing("200");
  auto refused = client->Sample(big);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("max_pixel_steps = 409600"), std::string::npos)
      << refused.status();
  v1::SampleRequest slow = Quick();
  slow.set_timestep_respacing("90");
  auto first = client->OpenStream(slow);
  v1::SampleEvent event;
  ASSERT_TRUE(first->Next(&event));
  auto second = client->StreamSample(Quick(), [](const v1::SampleEvent&) { return true; });
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(second.status().message().find("max_concurrent_streams = 1"), std::string::npos);
  first->Cancel();
  EXPECT_EQ(first->Finish().code(), absl::StatusCode::kCancelled);
  // The slot is given back when the first stream ends.
  absl::Status again;
  for (int i = 0; i < 50; ++i) {
    again = client->StreamSample(Quick(), [](const v1::SampleEvent&) { return true; }).status();
    if (again.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(again.ok()) << again;
}

// A call that runs past its deadline is counted as DEADLINE_EXCEEDED, as its caller saw it, not
// as CANCELLED.
TEST_F(SecurityTest, DeadlinesAreCountedAsDeadlineExceeded) {
  Served served(grpc::InsecureServerCredentials(), {});
  client::ClientOptions c;
  c.target = served.address();
  // Long enough for the call to reach the server on a loaded machine under ThreadSanitizer (with
  // 300 ms, and the cores busy, it expired on the way in and the server never saw it to count),
  // far shorter than 500 DDPM steps. Connected first, for the same reason.
  c.timeout_ms = 2000;
  auto client = Client(c);
  bool connected = false;
  for (int i = 0; i < 50 && !connected; ++i) connected = client->ListModels().ok();
  ASSERT_TRUE(connected);
  v1::SampleRequest slow = Quick();
  slow.set_timestep_respacing("500");
  EXPECT_EQ(client->Sample(slow).status().code(), absl::StatusCode::kDeadlineExceeded);
  const std::string needle =
      "gd_requests_total{model=\"parity\",method=\"Sample\",sampler=\"ddpm\","
      "code=\"DEADLINE_EXCEEDED\"} 1";
  std::string metrics;
  for (int i = 0; i < 100; ++i) {  // the record is written when the engine lets go of the job
    metrics = served.metrics().Render();
    if (metrics.find(needle) != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(metrics.find(needle), std::string::npos) << metrics.substr(0, 2000);
  EXPECT_EQ(metrics.find("code=\"CANCELLED\""), std::string::npos);
}

TEST_F(SecurityTest, MetricsEndpointExposesRequestsQueueAndLatency) {
  Served served(grpc::InsecureServerCredentials(), {});
  client::ClientOptions c;
  c.target = served.address();
  auto client = Client(c);
  ASSERT_TRUE(client->Sample(Quick()).ok());
  v1::SampleRequest bad = Quick();
  bad.add_labels(5000);
  EXPECT_FALSE(client->Sample(bad).ok());
  std::atomic<bool> ready{false};
  auto http = server::MetricsHttpServer::Start("127.0.0.1", 0,
                                               [&] { return served.metrics().Render(); },
                                               [&] { return ready.load(); });
  ASSERT_TRUE(http.ok()) << http.status();
  auto get = [&](const std::string& path) {
    std::string out;
    FILE* pipe = popen(absl::StrCat("curl -s -o - -w '\\n%{http_code}' http://127.0.0.1:",
                                    (*http)->port(), path).c_str(), "r");
    char buffer[4096];
    while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) out.append(buffer, n);
    pclose(pipe);
    return out;
  };
  if (!Sh("curl --version")) GTEST_SKIP() << "curl is not installed";
  const std::string metrics = get("/metrics");
  for (const std::string needle :
       {"gd_requests_total{model=\"parity\",method=\"Sample\",sampler=\"ddpm\",code=\"OK\"} 1",
        "code=\"INVALID_ARGUMENT\"} 1", "gd_queue_images{model=\"parity\"} 0",
        "gd_images_generated_total{model=\"parity\"} 1", "gd_batch_size_bucket{model=\"parity\",le=\"1\"} 2",
        "gd_unet_step_seconds_count{model=\"parity\"} 2", "gd_request_duration_seconds_count",
        "# TYPE gd_unet_step_seconds histogram", "gd_process_resident_memory_bytes"}) {
    EXPECT_NE(metrics.find(needle), std::string::npos) << needle << "\n" << metrics;
  }
  // Device memory is a family without samples when every model runs on the CPU.
  EXPECT_NE(metrics.find("# TYPE gd_device_memory_allocated_bytes gauge"), std::string::npos);
  EXPECT_EQ(metrics.find("gd_device_memory_allocated_bytes{"), std::string::npos);
  EXPECT_NE(get("/readyz").find("503"), std::string::npos);
  ready = true;
  EXPECT_NE(get("/readyz").find("200"), std::string::npos);
  EXPECT_NE(get("/healthz").find("200"), std::string::npos);
  EXPECT_NE(get("/nothing").find("404"), std::string::npos);
}

}  // namespace
}  // namespace gd
