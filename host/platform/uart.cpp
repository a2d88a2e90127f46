#include "platform/uart.hpp"

#include "platform/device_state.hpp"

namespace modevisor::host {

namespace {
constexpr std::uint8_t kLsrDr = 0x01, kLsrOe = 0x02, kLsrErrors = 0x1e, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr std::uint8_t kIerRx = 0x01, kIerThre = 0x02, kIerLine = 0x04, kIerModem = 0x08;
constexpr std::uint8_t kMcrLoop = 0x10;
constexpr std::uint8_t kLcrDlab = 0x80;
}  // namespace

Uart::Uart(std::string name, IrqLine irq, ConsoleSink* sink) : name_(std::move(name)), irq_(irq), sink_(sink) {
  state_.msr = 0xb0;  // DCD, DSR, CTS: a terminal is attached
}

void Uart::restore(const State& state) {
  state_ = state;
  irq_.restore_level((iir() & 0x01) == 0);
}

std::size_t Uart::trigger_level() const {
  if (!(state_.fcr & 1)) return 1;
  static constexpr std::size_t kLevels[] = {1, 4, 8, 14};
  return kLevels[state_.fcr >> 6];
}

std::uint8_t Uart::iir() const {
  const std::uint8_t fifo_bits = (state_.fcr & 1) ? 0xc0 : 0x00;
  std::uint8_t id = 0x01;  // none
  if ((state_.ier & kIerLine) && (state_.lsr & kLsrErrors))
    id = 0x06;
  else if ((state_.ier & kIerRx) && !state_.rx_fifo.empty())
    id = state_.rx_fifo.size() >= trigger_level() ? 0x04 : 0x0c;
  else if ((state_.ier & kIerThre) && state_.thr_interrupt)
    id = 0x02;
  else if ((state_.ier & kIerModem) && (state_.msr & 0x0f))
    id = 0x00;
  return fifo_bits | id;
}

void Uart::update_irq() {
  const bool request = (iir() & 0x01) == 0;
  if (request != irq_.level()) irq_.set(request);
}

void Uart::refill() {
  while (!state_.input.empty() && state_.rx_fifo.size() < fifo_capacity()) {
    state_.rx_fifo.push_back(state_.input.front());
    state_.input.erase(0, 1);
  }
  if (state_.rx_fifo.empty())
    state_.lsr &= ~kLsrDr;
  else
    state_.lsr |= kLsrDr;
}

void Uart::push_input(std::string_view bytes) {
  if (state_.mcr & kMcrLoop) return;  // the receiver listens to the transmitter only
  state_.input.append(bytes);
  refill();
  update_irq();
}

void Uart::receive(std::uint8_t byte) {
  if (state_.rx_fifo.size() >= fifo_capacity())
    state_.lsr |= kLsrOe;  // overrun: the byte is lost
  else
    state_.rx_fifo.push_back(static_cast<char>(byte));
  refill();
}

std::uint32_t Uart::port_read(std::uint16_t port, unsigned) {
  std::uint8_t v = 0xff;
  switch (port & 7) {
    case 0:
      if (state_.lcr & kLcrDlab) {
        v = state_.divisor & 0xff;
      } else {
        v = state_.rx_fifo.empty() ? 0 : static_cast<std::uint8_t>(state_.rx_fifo.front());
        if (!state_.rx_fifo.empty()) state_.rx_fifo.erase(0, 1);
        refill();
      }
      break;
    case 1:
      v = (state_.lcr & kLcrDlab) ? state_.divisor >> 8 : state_.ier;
      break;
    case 2:
      v = iir();
      if ((v & 0x0f) == 0x02) state_.thr_interrupt = false;  // reading IIR acknowledges THRE
      break;
    case 3:
      v = state_.lcr;
      break;
    case 4:
      v = state_.mcr;
      break;
    case 5:
      v = state_.lsr | kLsrThre | kLsrTemt;
      state_.lsr &= ~kLsrErrors;  // error bits clear on read
      break;
    case 6:
      v = state_.msr;
      state_.msr &= 0xf0;  // delta bits clear on read
      break;
    case 7:
      v = state_.scr;
      break;
  }
  update_irq();
  return v;
}

void Uart::port_write(std::uint16_t port, unsigned, std::uint32_t value) {
  const std::uint8_t v = static_cast<std::uint8_t>(value);
  switch (port & 7) {
    case 0:
      if (state_.lcr & kLcrDlab) {
        state_.divisor = static_cast<std::uint16_t>((state_.divisor & 0xff00) | v);
        break;
      }
      if (state_.mcr & kMcrLoop)
        receive(v);
      else if (sink_)
        sink_->write(v);
      state_.thr_interrupt = true;  // transmitted at once: THR empty again
      break;
    case 1:
      if (state_.lcr & kLcrDlab) {
        state_.divisor = static_cast<std::uint16_t>((state_.divisor & 0x00ff) | (v << 8));
      } else {
        // Enabling the THRE interrupt with THR empty raises it.
        if ((v & kIerThre) && !(state_.ier & kIerThre)) state_.thr_interrupt = true;
        state_.ier = v & 0x0f;
      }
      break;
    case 2:
      if ((v & 1) != (state_.fcr & 1)) state_.rx_fifo.clear();  // changing FIFO mode clears them
      if (v & 0x02) state_.rx_fifo.clear();
      state_.fcr = v & 0xc1;
      refill();
      break;
    case 3:
      state_.lcr = v;
      break;
    case 4: {
      const std::uint8_t old_msr = state_.msr;
      state_.mcr = v & 0x1f;
      std::uint8_t lines;
      if (state_.mcr & kMcrLoop) {
        // Loopback: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
        lines = static_cast<std::uint8_t>(((state_.mcr & 0x02) << 3) | ((state_.mcr & 0x01) << 5) |
                                          ((state_.mcr & 0x04) << 4) | ((state_.mcr & 0x08) << 4));
      } else {
        lines = 0xb0;
      }
      std::uint8_t delta = old_msr & 0x0f;
      const std::uint8_t changed = (old_msr ^ lines) & 0xf0;
      if (changed & 0x10) delta |= 0x01;                     // DCTS
      if (changed & 0x20) delta |= 0x02;                     // DDSR
      if ((old_msr & 0x40) && !(lines & 0x40)) delta |= 0x04;  // TERI: trailing edge of RI
      if (changed & 0x80) delta |= 0x08;                     // DDCD
      state_.msr = lines | delta;
      break;
    }
    case 5:
    case 6:
      break;  // read-only (factory test writes ignored)
    case 7:
      state_.scr = v;
      break;
  }
  update_irq();
}

namespace {
std::string hex(const std::string& bytes) {
  return to_hex(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
}
std::string unhex(const std::string& text) {
  std::string out(text.size() / 2, '\0');
  from_hex(text, reinterpret_cast<std::uint8_t*>(out.data()), out.size());
  return out;
}
}  // namespace

void to_json(nlohmann::json& j, const Uart::State& s) {
  j = {{"divisor", s.divisor}, {"ier", s.ier}, {"lcr", s.lcr}, {"mcr", s.mcr}, {"lsr", s.lsr},
       {"msr", s.msr}, {"scr", s.scr}, {"fcr", s.fcr}, {"thr_interrupt", s.thr_interrupt},
       {"rx_fifo", hex(s.rx_fifo)}, {"input", hex(s.input)}};
}

void from_json(const nlohmann::json& j, Uart::State& s) {
  j.at("divisor").get_to(s.divisor);
  j.at("ier").get_to(s.ier);
  j.at("lcr").get_to(s.lcr);
  j.at("mcr").get_to(s.mcr);
  j.at("lsr").get_to(s.lsr);
  j.at("msr").get_to(s.msr);
  j.at("scr").get_to(s.scr);
  j.at("fcr").get_to(s.fcr);
  j.at("thr_interrupt").get_to(s.thr_interrupt);
  s.rx_fifo = unhex(j.at("rx_fifo").get<std::string>());
  s.input = unhex(j.at("input").get<std::string>());
}

}  // namespace modevisor::host
