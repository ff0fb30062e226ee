// The registry's VNet: a subnet delegated to the function app's VNet integration, and one for
// the private endpoints of the app and its storage.

@description('Azure region.')
param location string

@description('Name prefix for the resources.')
param name string

@description('Address space of the VNet.')
param addressPrefix string

@description('Subnet for the function app\'s outbound VNet integration (Flex Consumption: /27 or larger).')
param integrationSubnetPrefix string

@description('Subnet for private endpoints.')
param privateEndpointSubnetPrefix string

param tags object

resource vnet 'Microsoft.Network/virtualNetworks@2024-01-01' = {
  name: '${name}-vnet'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'integration'
        properties: {
          addressPrefix: integrationSubnetPrefix
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

output vnetId string = vnet.id
output integrationSubnetId string = vnet.properties.subnets[0].id
output privateEndpointSubnetId string = vnet.properties.subnets[1].id
