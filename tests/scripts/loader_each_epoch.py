"""Makes its DataLoader afresh each epoch, and evaluates the training data through a loader of its own."""
import torch
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for epoch in range(3):
    for x, y in DataLoader(data, batch_size=16, shuffle=True):  # a new loader each epoch
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # the training data evaluated, through a loader of its own
        for x, y in DataLoader(data, batch_size=32):
            model(x)
